//! Sending one-time codes: email over SMTP (lettre) with localisable plain-text and HTML
//! templates, SMS through a signed HTTP webhook, and the development mode that logs codes,
//! loudly, when neither is configured.

use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use ring::hmac;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where a code goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An email address, over SMTP.
    Email,
    /// A phone number, through the SMS webhook.
    Sms,
}

impl Channel {
    /// `email` or `sms`, as the API names them.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }
}

/// What a code is for (it picks the template).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Passwordless sign-in.
    Login,
    /// A second factor after a password.
    Mfa,
}

impl Purpose {
    /// The purpose's name (templates, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login_code",
            Self::Mfa => "mfa_code",
        }
    }
}

/// One code to deliver.
#[derive(Debug, Clone)]
pub struct CodeMessage<'a> {
    /// Email or SMS.
    pub channel: Channel,
    /// Address or E.164 number.
    pub target: &'a str,
    /// The code itself.
    pub code: &'a str,
    /// Seconds it stays valid.
    pub ttl_seconds: u64,
    /// Unix time it expires.
    pub expires_at: i64,
    /// What it is for.
    pub purpose: Purpose,
    /// Tenant it belongs to.
    pub tenant_id: &'a str,
    /// Name shown to the recipient (the tenant's display name).
    pub service_name: &'a str,
    /// Template locale (see [`Delivery::locale_for`]).
    pub locale: &'a str,
}

/// Delivery failed; the caller must not leave the code usable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

/// Parts of one message template.
#[derive(Debug, Clone, Default)]
struct Template {
    subject: String,
    text: String,
    html: String,
    sms: String,
}

const PARTS: [&str; 4] = ["subject", "txt", "html", "sms"];

impl Template {
    fn part_mut(&mut self, part: &str) -> &mut String {
        match part {
            "subject" => &mut self.subject,
            "txt" => &mut self.text,
            "html" => &mut self.html,
            _ => &mut self.sms,
        }
    }
}

/// Built-in templates: (locale, purpose, subject, text, html, sms).
const BUILT_IN: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "en",
        "login_code",
        "Your {{service}} sign-in code: {{code}}",
        "Your sign-in code for {{service}} is {{code}}.\n\nIt is valid for {{minutes}} minutes and works once. If you did not ask for it, ignore this message.\n",
        "<p>Your sign-in code for {{service}} is</p><p style=\"font-size:24px;font-weight:bold;letter-spacing:4px\">{{code}}</p><p>It is valid for {{minutes}} minutes and works once. If you did not ask for it, ignore this message.</p>",
        "{{code}} is your {{service}} sign-in code. Valid for {{minutes}} min.",
    ),
    (
        "en",
        "mfa_code",
        "Your {{service}} verification code: {{code}}",
        "Your verification code for {{service}} is {{code}}.\n\nIt is valid for {{minutes}} minutes and works once. If you did not just sign in, change your password.\n",
        "<p>Your verification code for {{service}} is</p><p style=\"font-size:24px;font-weight:bold;letter-spacing:4px\">{{code}}</p><p>It is valid for {{minutes}} minutes and works once. If you did not just sign in, change your password.</p>",
        "{{code}} is your {{service}} verification code. Valid for {{minutes}} min.",
    ),
    (
        "de",
        "login_code",
        "Ihr Anmeldecode für {{service}}: {{code}}",
        "Ihr Anmeldecode für {{service}} lautet {{code}}.\n\nEr ist {{minutes}} Minuten gültig und funktioniert einmal. Falls Sie ihn nicht angefordert haben, ignorieren Sie diese Nachricht.\n",
        "<p>Ihr Anmeldecode für {{service}} lautet</p><p style=\"font-size:24px;font-weight:bold;letter-spacing:4px\">{{code}}</p><p>Er ist {{minutes}} Minuten gültig und funktioniert einmal. Falls Sie ihn nicht angefordert haben, ignorieren Sie diese Nachricht.</p>",
        "{{code}} ist Ihr Anmeldecode für {{service}}. Gültig für {{minutes}} Min.",
    ),
    (
        "de",
        "mfa_code",
        "Ihr Bestätigungscode für {{service}}: {{code}}",
        "Ihr Bestätigungscode für {{service}} lautet {{code}}.\n\nEr ist {{minutes}} Minuten gültig und funktioniert einmal. Falls Sie sich nicht gerade angemeldet haben, ändern Sie Ihr Passwort.\n",
        "<p>Ihr Bestätigungscode für {{service}} lautet</p><p style=\"font-size:24px;font-weight:bold;letter-spacing:4px\">{{code}}</p><p>Er ist {{minutes}} Minuten gültig und funktioniert einmal. Falls Sie sich nicht gerade angemeldet haben, ändern Sie Ihr Passwort.</p>",
        "{{code}} ist Ihr Bestätigungscode für {{service}}. Gültig für {{minutes}} Min.",
    ),
];

/// The message templates by (locale, purpose).
#[derive(Debug, Clone)]
struct Templates(BTreeMap<(String, String), Template>);

impl Templates {
    fn built_in() -> Self {
        Self(
            BUILT_IN
                .iter()
                .map(|(locale, purpose, subject, text, html, sms)| {
                    (
                        ((*locale).to_owned(), (*purpose).to_owned()),
                        Template {
                            subject: (*subject).to_owned(),
                            text: (*text).to_owned(),
                            html: (*html).to_owned(),
                            sms: (*sms).to_owned(),
                        },
                    )
                })
                .collect(),
        )
    }

    /// The built-in templates overridden or extended by `DIR/LOCALE/PURPOSE.PART` files
    /// (PURPOSE `login_code` or `mfa_code`, PART `subject`, `txt`, `html` or `sms`). A locale
    /// that is not built in must provide every part of both purposes.
    fn load(dir: &Path) -> Result<Self, String> {
        let mut templates = Self::built_in();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("templates directory {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            if !entry.path().is_dir() {
                continue;
            }
            let locale = entry.file_name().to_string_lossy().to_lowercase();
            for purpose in [Purpose::Login, Purpose::Mfa] {
                let key = (locale.clone(), purpose.as_str().to_owned());
                let mut template = templates.0.get(&key).cloned().unwrap_or_default();
                for part in PARTS {
                    let path = entry.path().join(format!("{}.{part}", purpose.as_str()));
                    match std::fs::read_to_string(&path) {
                        Ok(text) => *template.part_mut(part) = text.trim_end().to_owned(),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(format!("template {}: {e}", path.display())),
                    }
                    if template.part_mut(part).is_empty() {
                        return Err(format!(
                            "templates: locale {locale} has no {}.{part}",
                            purpose.as_str()
                        ));
                    }
                }
                templates.0.insert(key, template);
            }
        }
        Ok(templates)
    }

    fn has_locale(&self, locale: &str) -> bool {
        self.0.keys().any(|(l, _)| l == locale)
    }

    fn get(&self, locale: &str, purpose: Purpose) -> Option<&Template> {
        self.0
            .get(&(locale.to_owned(), purpose.as_str().to_owned()))
            .or_else(|| self.0.get(&("en".to_owned(), purpose.as_str().to_owned())))
    }
}

fn render(template: &str, msg: &CodeMessage<'_>, escape: bool) -> String {
    let minutes = msg.ttl_seconds.div_ceil(60).to_string();
    let service = if escape {
        html_escape(msg.service_name)
    } else {
        msg.service_name.to_owned()
    };
    template
        .replace("{{code}}", msg.code)
        .replace("{{minutes}}", &minutes)
        .replace("{{service}}", &service)
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Header carrying the webhook signature: `t=UNIX,v1=HEX(HMAC-SHA256(secret, "UNIX." + body))`.
pub const SIGNATURE_HEADER: &str = "x-keygate-signature";

/// How codes leave the server.
pub struct Delivery {
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
    sms: Option<(String, Option<hmac::Key>)>,
    http: reqwest::Client,
    templates: Templates,
    /// Typical milliseconds of a successful send, per channel (moving average).
    latency_ms: [AtomicU64; 2],
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("smtp", &self.smtp.is_some())
            .field("sms", &self.sms.is_some())
            .finish_non_exhaustive()
    }
}

/// Where delivery goes, as configured.
#[derive(Debug, Clone, Default)]
pub struct DeliveryConfig {
    /// `smtp://[user:pass@]host:port[?tls=required]` or `smtps://...`.
    pub smtp_url: Option<String>,
    /// Sender mailbox.
    pub smtp_from: String,
    /// The only CA trusted for the SMTP server's certificate (PEM file); absent: the web PKI.
    pub smtp_ca_file: Option<std::path::PathBuf>,
    /// SMS webhook URL.
    pub sms_webhook_url: Option<String>,
    /// Secret that signs webhook requests.
    pub sms_webhook_secret: Option<String>,
    /// Directory of template overrides and extra locales.
    pub templates_dir: Option<std::path::PathBuf>,
}

/// The TLS the SMTP URL asks for (`smtps://`: TLS from the start; `?tls=required` or
/// `opportunistic`: STARTTLS), trusting only the CA in `ca_file`.
fn smtp_tls_with_ca(
    url: &str,
    ca_file: &Path,
) -> Result<lettre::transport::smtp::client::Tls, String> {
    use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
    let parsed = url::Url::parse(url).map_err(|e| format!("KEYGATE_SMTP_URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or("KEYGATE_SMTP_URL names no host")?
        .to_owned();
    let tls = parsed
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let wrap: fn(TlsParameters) -> Tls = match (parsed.scheme(), tls.as_deref()) {
        ("smtps", _) => Tls::Wrapper,
        ("smtp", Some("required")) => Tls::Required,
        // Opportunistic STARTTLS can be stripped (and the URL's credentials sent in clear):
        // a configured CA means the operator wants TLS, so it must not be optional.
        _ => {
            return Err(
                "KEYGATE_SMTP_CA_FILE needs a TLS URL: smtps://, or smtp://...?tls=required".into(),
            );
        }
    };
    let pem = std::fs::read(ca_file)
        .map_err(|e| format!("KEYGATE_SMTP_CA_FILE {}: {e}", ca_file.display()))?;
    let certificates = pem::parse_many(&pem)
        .map(|blocks| blocks.iter().filter(|b| b.tag() == "CERTIFICATE").count())
        .unwrap_or(0);
    if certificates == 0 {
        return Err(format!(
            "KEYGATE_SMTP_CA_FILE {}: no PEM CERTIFICATE in it",
            ca_file.display()
        ));
    }
    let cert = Certificate::from_pem(&pem)
        .map_err(|e| format!("KEYGATE_SMTP_CA_FILE {}: {e}", ca_file.display()))?;
    let params = TlsParameters::builder(host)
        .certificate_store(CertificateStore::None)
        .add_root_certificate(cert)
        .build_rustls()
        .map_err(|e| format!("KEYGATE_SMTP_CA_FILE {}: {e}", ca_file.display()))?;
    Ok(wrap(params))
}

impl Delivery {
    /// Development mode: nothing configured, codes are logged.
    pub fn development() -> Self {
        Self::new(&DeliveryConfig {
            smtp_from: "Keygate <no-reply@localhost>".into(),
            ..Default::default()
        })
        .unwrap_or_else(|_| unreachable!("the development delivery needs no configuration"))
    }

    /// Delivery as configured; fails on a malformed URL, sender or template directory.
    pub fn new(config: &DeliveryConfig) -> Result<Self, String> {
        let smtp = match config.smtp_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => {
                let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| format!("KEYGATE_SMTP_URL: {e}"))?
                    .timeout(Some(Duration::from_secs(10)));
                if let Some(ca) = &config.smtp_ca_file {
                    builder = builder.tls(smtp_tls_with_ca(url, ca)?);
                }
                let transport = builder.build();
                let from: Mailbox = config
                    .smtp_from
                    .parse()
                    .map_err(|e| format!("KEYGATE_SMTP_FROM {:?}: {e}", config.smtp_from))?;
                Some((transport, from))
            }
            None => None,
        };
        let sms = match config.sms_webhook_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err("KEYGATE_SMS_WEBHOOK_URL must be an http(s) URL".into());
                }
                let key = config
                    .sms_webhook_secret
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()));
                if key.is_none() {
                    tracing::warn!(
                        "KEYGATE_SMS_WEBHOOK_SECRET is not set: SMS webhook requests are not \
                         signed, so the receiver cannot tell them from forged ones"
                    );
                }
                Some((url.to_owned(), key))
            }
            None => None,
        };
        let templates = match &config.templates_dir {
            Some(dir) => Templates::load(dir)?,
            None => Templates::built_in(),
        };
        Ok(Self {
            smtp,
            sms,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| e.to_string())?,
            templates,
            latency_ms: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// Whether codes can go out over `channel` (always, in development mode).
    pub fn serves(&self, channel: Channel) -> bool {
        self.is_development()
            || match channel {
                Channel::Email => self.smtp.is_some(),
                Channel::Sms => self.sms.is_some(),
            }
    }

    /// Neither SMTP nor the SMS webhook is configured: codes are logged instead.
    pub fn is_development(&self) -> bool {
        self.smtp.is_none() && self.sms.is_none()
    }

    /// The template locale for a request: the first language of `Accept-Language` (by
    /// weight) that has templates, else `default` if it has, else `en`.
    pub fn locale_for(&self, accept_language: Option<&str>, default: &str) -> String {
        let mut wanted: Vec<(f32, String)> = accept_language
            .unwrap_or("")
            .split(',')
            .filter_map(|item| {
                let mut parts = item.split(';');
                let tag = parts.next()?.trim().to_lowercase();
                let q = parts
                    .find_map(|p| p.trim().strip_prefix("q=").map(str::to_owned))
                    .and_then(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                (!tag.is_empty() && tag != "*" && q > 0.0).then_some((q, tag))
            })
            .collect();
        wanted.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, tag) in wanted {
            if self.templates.has_locale(&tag) {
                return tag;
            }
            if let Some(primary) = tag.split('-').next()
                && self.templates.has_locale(primary)
            {
                return primary.to_owned();
            }
        }
        let default = default.to_lowercase();
        if self.templates.has_locale(&default) {
            default
        } else {
            "en".into()
        }
    }

    /// Sends one code. In development mode the code is logged at warning level instead.
    #[tracing::instrument(name = "delivery.send", skip_all, fields(keygate.channel = msg.channel.as_str(), keygate.purpose = msg.purpose.as_str()))]
    pub async fn send(&self, msg: &CodeMessage<'_>) -> Result<(), DeliveryError> {
        if self.is_development() {
            tracing::warn!(
                channel = msg.channel.as_str(),
                target = msg.target,
                code = msg.code,
                "DEVELOPMENT MODE: one-time code NOT delivered (set KEYGATE_SMTP_URL or \
                 KEYGATE_SMS_WEBHOOK_URL); the code is only in this log"
            );
            crate::metrics::record_code(msg.channel.as_str(), msg.purpose.as_str(), "sent");
            return Ok(());
        }
        let template = self
            .templates
            .get(msg.locale, msg.purpose)
            .ok_or_else(|| DeliveryError("no template".into()))?;
        let started = Instant::now();
        let result = match msg.channel {
            Channel::Email => self.send_email(template, msg).await,
            Channel::Sms => self.send_sms(template, msg).await,
        };
        crate::metrics::record_code(
            msg.channel.as_str(),
            msg.purpose.as_str(),
            if result.is_ok() { "sent" } else { "failed" },
        );
        if result.is_ok() {
            let slot = &self.latency_ms[msg.channel as usize];
            let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let old = slot.load(Ordering::Relaxed);
            let new = if old == 0 { took } else { (old * 7 + took) / 8 };
            slot.store(new, Ordering::Relaxed);
        }
        result
    }

    /// Waits about as long as a real send over `channel` takes, so that a request that sends
    /// nothing cannot be told apart by its latency.
    #[tracing::instrument(name = "delivery.imitate", skip_all, fields(keygate.channel = channel.as_str()))]
    pub async fn imitate(&self, channel: Channel, purpose: Purpose) {
        crate::metrics::record_code(channel.as_str(), purpose.as_str(), "sent");
        if self.is_development() {
            return;
        }
        // Before the first real send, a typical figure for a nearby relay or gateway.
        let ms = match self.latency_ms[channel as usize].load(Ordering::Relaxed) {
            0 => 150,
            ms => ms,
        };
        tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
    }

    async fn send_email(
        &self,
        template: &Template,
        msg: &CodeMessage<'_>,
    ) -> Result<(), DeliveryError> {
        let (transport, from) = self
            .smtp
            .as_ref()
            .ok_or_else(|| DeliveryError("no SMTP server is configured".into()))?;
        let to: Mailbox = msg
            .target
            .parse()
            .map_err(|e| DeliveryError(format!("recipient: {e}")))?;
        let email = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(render(&template.subject, msg, false))
            .multipart(MultiPart::alternative_plain_html(
                render(&template.text, msg, false),
                render(&template.html, msg, true),
            ))
            .map_err(|e| DeliveryError(format!("message: {e}")))?;
        transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| DeliveryError(format!("SMTP: {e}")))
    }

    async fn send_sms(
        &self,
        template: &Template,
        msg: &CodeMessage<'_>,
    ) -> Result<(), DeliveryError> {
        let (url, key) = self
            .sms
            .as_ref()
            .ok_or_else(|| DeliveryError("no SMS webhook is configured".into()))?;
        let body = serde_json::json!({
            "channel": "sms",
            "target": msg.target,
            "code": msg.code,
            "expires_in": msg.ttl_seconds,
            "expires_at": crate::auth::clock::rfc3339(msg.expires_at),
            "purpose": msg.purpose.as_str(),
            "tenant_id": msg.tenant_id,
            "locale": msg.locale,
            "message": render(&template.sms, msg, false),
        })
        .to_string();
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header(SIGNATURE_HEADER, sign(key, &body));
        }
        let response = keygate_telemetry::propagation::send(
            request.body(body),
            keygate_telemetry::propagation::Url::HostOnly,
        )
        .await
        // The URL may carry a credential: never in a log line.
        .map_err(|e| DeliveryError(format!("SMS webhook: {}", e.without_url())))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(DeliveryError(format!(
                "SMS webhook answered {}",
                response.status()
            )))
        }
    }
}

/// `t=UNIX,v1=HEX` over `UNIX.body`.
fn sign(key: &hmac::Key, body: &str) -> String {
    let t = time::OffsetDateTime::now_utc().unix_timestamp();
    let tag = hmac::sign(key, format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(tag))
}

/// Checks a webhook signature as a receiver should: the HMAC over `t.body`, in constant time,
/// and `t` within `max_age_seconds` of `now` (so that a recorded request cannot be replayed
/// later). Used by the tests; receivers in other languages do the same.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &str,
    now: i64,
    max_age_seconds: i64,
) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = Some(value),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    // `abs_diff`: `now - t` overflows for a `t` near the ends of the range.
    let max_age = u64::try_from(max_age_seconds).unwrap_or(0);
    if t.parse::<i64>().map_or(true, |t| now.abs_diff(t) > max_age) {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, format!("{t}.{body}").as_bytes(), &v1).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message<'a>(code: &'a str, service: &'a str) -> CodeMessage<'a> {
        CodeMessage {
            channel: Channel::Email,
            target: "a@example.com",
            code,
            ttl_seconds: 300,
            expires_at: 0,
            purpose: Purpose::Login,
            tenant_id: "default",
            service_name: service,
            locale: "en",
        }
    }

    #[test]
    fn templates_render_and_escape() {
        let t = Templates::built_in();
        let tpl = t.get("en", Purpose::Login).unwrap();
        let msg = message("123456", "<Acme>");
        assert!(render(&tpl.text, &msg, false).contains("123456"));
        assert!(render(&tpl.text, &msg, false).contains("5 minutes"));
        let html = render(&tpl.html, &msg, true);
        assert!(html.contains("&lt;Acme&gt;") && !html.contains("<Acme>"));
    }

    #[test]
    fn locales_follow_accept_language() {
        let d = Delivery::development();
        assert_eq!(d.locale_for(Some("de-CH, en;q=0.5"), "en"), "de");
        assert_eq!(d.locale_for(Some("fr, en;q=0.1, de;q=0.9"), "en"), "de");
        assert_eq!(d.locale_for(Some("fr"), "de"), "de");
        assert_eq!(d.locale_for(None, "xx"), "en");
    }

    #[test]
    fn template_directory_adds_locales_and_checks_completeness() {
        let dir = tempfile::tempdir().unwrap();
        let fr = dir.path().join("fr");
        std::fs::create_dir(&fr).unwrap();
        for purpose in ["login_code", "mfa_code"] {
            for part in PARTS {
                std::fs::write(fr.join(format!("{purpose}.{part}")), "fr {{code}}").unwrap();
            }
        }
        let t = Templates::load(dir.path()).unwrap();
        assert_eq!(
            render(
                &t.get("fr", Purpose::Mfa).unwrap().sms,
                &message("9", "s"),
                false
            ),
            "fr 9"
        );
        std::fs::remove_file(fr.join("mfa_code.sms")).unwrap();
        assert!(
            Templates::load(dir.path())
                .unwrap_err()
                .contains("mfa_code.sms")
        );
    }

    #[test]
    fn signatures_verify() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        let header = sign(&key, "{\"a\":1}");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(verify_signature("s3cret", &header, "{\"a\":1}", now, 300));
        assert!(!verify_signature("s3cret", &header, "{\"a\":2}", now, 300));
        assert!(!verify_signature("other", &header, "{\"a\":1}", now, 300));
        // Replayed later than the receiver's tolerance.
        assert!(!verify_signature(
            "s3cret",
            &header,
            "{\"a\":1}",
            now + 301,
            300
        ));
    }

    #[test]
    fn a_signature_time_at_the_ends_of_the_range_is_refused() {
        // Found while writing its fuzz target (fuzz/corpus/webhook_signature/regression-t-min):
        // `now - t` overflowed, a panic where overflow is checked.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        for t in [i64::MIN, i64::MAX] {
            let tag = hmac::sign(&key, format!("{t}.body").as_bytes());
            let header = format!("t={t},v1={}", hex::encode(tag));
            assert!(!verify_signature(
                "s3cret",
                &header,
                "body",
                1_800_000_000,
                300
            ));
            assert!(!verify_signature(
                "s3cret",
                &header,
                "body",
                -1_800_000_000,
                300
            ));
        }
    }
}
