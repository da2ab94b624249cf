//! Account rules: normalising and validating usernames, emails, phones and passwords, telling
//! which kind an identity is, and creating users (shared by the admin API and the CLI).

use super::error::{AuthError, FieldViolation};
use super::password::MAX_PASSWORD_BYTES;
use crate::store::IdentityKind;

/// Longest identity accepted at login (an email address can be 320 characters).
pub const MAX_IDENTITY_CHARS: usize = 320;
/// Shortest password accepted when one is set (NIST SP 800-63B minimum).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Roles that exist.
pub const KNOWN_ROLES: &[&str] = &["admin", "ticket-issuer"];

/// Permissions and the roles that grant them.
pub const PERMISSIONS: &[(&str, &[&str])] = &[("tickets:create", &["admin", "ticket-issuer"])];

/// Whether any of `roles` grants `permission`.
pub fn grants(roles: &[String], permission: &str) -> bool {
    PERMISSIONS
        .iter()
        .filter(|(p, _)| *p == permission)
        .flat_map(|(_, granted_to)| granted_to.iter())
        .any(|r| roles.iter().any(|have| have == r))
}

/// An identity as typed at login, normalised and classified: contains `@` → email
/// (lowercased), starts with `+` → phone, otherwise username (lowercased).
pub fn classify_identity(raw: &str) -> (IdentityKind, String) {
    let s = raw.trim();
    if s.contains('@') {
        (IdentityKind::Email, s.to_lowercase())
    } else if s.starts_with('+') {
        (IdentityKind::Phone, s.to_owned())
    } else {
        (IdentityKind::Username, s.to_lowercase())
    }
}

/// A request to create a user, before validation.
#[derive(Debug, Clone, Default)]
pub struct UserInput {
    /// Username.
    pub username: String,
    /// Email address.
    pub email: Option<String>,
    /// Phone number (E.164).
    pub phone: Option<String>,
    /// Password; `None` for accounts that sign in without one.
    pub password: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Require a password change at first login.
    pub must_change_password: bool,
}

/// Checks every field and returns all violations at once; on success, the input normalised
/// (lowercase username and email, trimmed phone, known and deduplicated roles).
pub fn validate_user(input: UserInput) -> Result<UserInput, AuthError> {
    let mut errors = Vec::new();
    let username = input.username.trim().to_lowercase();
    if username.is_empty() {
        errors.push(FieldViolation::new(
            "username",
            "required",
            "username is required",
        ));
    } else if username.chars().count() > 64
        || !username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        || !username.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        errors.push(FieldViolation::new(
            "username",
            "format",
            "1 to 64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit",
        ));
    }
    let email = input
        .email
        .map(|e| e.trim().to_lowercase())
        .filter(|e| !e.is_empty());
    if let Some(e) = &email
        && !is_email(e)
    {
        errors.push(FieldViolation::new(
            "email",
            "format",
            "must be a valid email address",
        ));
    }
    let phone = input
        .phone
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty());
    if let Some(p) = &phone
        && !is_e164(p)
    {
        errors.push(FieldViolation::new(
            "phone",
            "format",
            "must be in E.164 form, e.g. +14155550123",
        ));
    }
    if let Some(pw) = &input.password {
        if pw.len() > MAX_PASSWORD_BYTES {
            errors.push(FieldViolation::new(
                "password",
                "range",
                format!("at most {MAX_PASSWORD_BYTES} bytes"),
            ));
        } else if pw.chars().count() < MIN_PASSWORD_CHARS {
            errors.push(FieldViolation::new(
                "password",
                "range",
                format!("at least {MIN_PASSWORD_CHARS} characters"),
            ));
        }
    }
    let mut roles: Vec<String> = Vec::new();
    for (i, r) in input.roles.iter().enumerate() {
        if !KNOWN_ROLES.contains(&r.as_str()) {
            errors.push(FieldViolation::new(
                format!("roles[{i}]"),
                "format",
                format!("unknown role; known roles: {}", KNOWN_ROLES.join(", ")),
            ));
        } else if !roles.contains(r) {
            roles.push(r.clone());
        }
    }
    if !errors.is_empty() {
        return Err(AuthError::Validation(errors));
    }
    Ok(UserInput {
        username,
        email,
        phone,
        password: input.password,
        roles,
        must_change_password: input.must_change_password,
    })
}

/// Checks a new password against the tenant's composition rules (length in characters,
/// character classes); every broken rule is reported.
pub fn check_password_rules(
    password: &str,
    policy: &keygate_config::PasswordPolicy,
    field: &str,
) -> Result<(), AuthError> {
    let mut broken = Vec::new();
    let chars = password.chars().count();
    if chars < policy.min_length || chars > policy.max_length {
        broken.push(format!(
            "between {} and {} characters",
            policy.min_length, policy.max_length
        ));
    }
    type ClassRule = (bool, fn(char) -> bool, &'static str);
    let classes: [ClassRule; 4] = [
        (
            policy.require_upper,
            char::is_uppercase,
            "an uppercase letter",
        ),
        (
            policy.require_lower,
            char::is_lowercase,
            "a lowercase letter",
        ),
        (policy.require_digit, |c| c.is_ascii_digit(), "a digit"),
        (
            policy.require_special,
            |c| !c.is_alphanumeric(),
            "a character that is neither letter nor digit",
        ),
    ];
    for (required, test, what) in classes {
        if required && !password.chars().any(test) {
            broken.push(format!("at least {what}"));
        }
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(AuthError::Validation(vec![FieldViolation::new(
            field,
            "format",
            broken.join("; "),
        )]))
    }
}

/// Where a user's password stands against the tenant's expiry policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordStatus {
    /// Whole days until expiry (0 once expired); `None` when passwords do not expire.
    pub expires_in_days: Option<i64>,
    /// `expiring`, `expired_grace` or `expired`.
    pub warning: Option<&'static str>,
    /// A change is required (administrator's demand, or expired within the grace period).
    pub must_change: bool,
}

impl PasswordStatus {
    /// Past the grace period: sign-in is refused until the password is reset.
    pub fn is_expired(&self) -> bool {
        self.warning == Some("expired")
    }
}

const DAY: i64 = 86_400;

/// The password status of `user` at `now` under `policy`.
pub fn password_status(
    user: &crate::store::User,
    policy: &keygate_config::PasswordPolicy,
    now: i64,
) -> PasswordStatus {
    let mut status = PasswordStatus {
        must_change: user.must_change_password,
        ..Default::default()
    };
    let Some(changed) = user.password_changed_at.filter(|_| policy.expiry_days > 0) else {
        return status;
    };
    let expires_at = changed + policy.expiry_days * DAY;
    let left = expires_at - now;
    status.expires_in_days = Some(if left > 0 { (left + DAY - 1) / DAY } else { 0 });
    if left > 0 {
        if left <= policy.warn_days * DAY {
            status.warning = Some("expiring");
        }
    } else if -left < policy.grace_period_days * DAY {
        status.warning = Some("expired_grace");
        status.must_change = true;
    } else {
        status.warning = Some("expired");
        status.must_change = true;
    }
    status
}

/// A pragmatic email check: one `@`, a non-empty local part, a dotted domain, no spaces.
pub fn is_email(s: &str) -> bool {
    // Lengths in characters, as the OpenAPI document's maxLength and pattern count them.
    if s.chars().count() > 254 || s.chars().any(char::is_whitespace) {
        return false;
    }
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.chars().count() <= 64
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
        }
        None => false,
    }
}

/// E.164: `+`, a non-zero digit, then 6 to 14 more digits.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_lengths_count_characters() {
        let local = "é".repeat(64);
        assert!(is_email(&format!("{local}@example.com")));
        assert!(!is_email(&format!("{local}é@example.com")));
        let long = format!("a@{}.com", "é".repeat(248));
        assert_eq!(long.chars().count(), 254);
        assert!(is_email(&long));
    }

    #[test]
    fn identities_are_classified_and_normalised() {
        assert_eq!(
            classify_identity(" John.Doe "),
            (IdentityKind::Username, "john.doe".into())
        );
        assert_eq!(
            classify_identity("John@Example.COM"),
            (IdentityKind::Email, "john@example.com".into())
        );
        assert_eq!(
            classify_identity("+14155550123"),
            (IdentityKind::Phone, "+14155550123".into())
        );
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let err = validate_user(UserInput {
            username: "bad name".into(),
            email: Some("nope".into()),
            phone: Some("0123".into()),
            password: Some("short".into()),
            roles: vec!["root".into()],
            must_change_password: false,
        })
        .unwrap_err();
        let AuthError::Validation(v) = err else {
            panic!()
        };
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            ["username", "email", "phone", "password", "roles[0]"]
        );
    }

    #[test]
    fn good_input_is_normalised() {
        let u = validate_user(UserInput {
            username: "Alice".into(),
            email: Some(" Alice@Example.com ".into()),
            phone: Some("+4915112345678".into()),
            password: Some("correct horse battery".into()),
            roles: vec!["admin".into(), "admin".into()],
            must_change_password: true,
        })
        .unwrap();
        assert_eq!(u.username, "alice");
        assert_eq!(u.email.as_deref(), Some("alice@example.com"));
        assert_eq!(u.roles, ["admin"]);
    }

    #[test]
    fn password_expiry_follows_the_policy_and_the_clock() {
        let clock = crate::auth::clock::ManualClock::at(1_000_000_000);
        use crate::auth::clock::Clock;
        let user = crate::store::User {
            id: "usr_1".into(),
            tenant_id: "default".into(),
            username: "a".into(),
            email: None,
            phone: None,
            password_hash: None,
            status: "active".into(),
            roles: vec![],
            must_change_password: false,
            password_changed_at: Some(clock.unix()),
            created_at: clock.unix(),
        };
        let policy = keygate_config::PasswordPolicy {
            expiry_days: 90,
            warn_days: 14,
            grace_period_days: 7,
            ..Default::default()
        };
        let at = |c: &crate::auth::clock::ManualClock| password_status(&user, &policy, c.unix());
        assert_eq!(
            at(&clock),
            PasswordStatus {
                expires_in_days: Some(90),
                warning: None,
                must_change: false
            }
        );
        clock.advance(76 * DAY + 1);
        assert_eq!(at(&clock).warning, Some("expiring"));
        assert_eq!(at(&clock).expires_in_days, Some(14));
        clock.advance(14 * DAY);
        let s = at(&clock);
        assert_eq!(
            (s.warning, s.must_change, s.expires_in_days),
            (Some("expired_grace"), true, Some(0))
        );
        clock.advance(7 * DAY);
        assert!(at(&clock).is_expired());
        // No expiry configured: nothing, except an administrator's demand.
        let none = keygate_config::PasswordPolicy::default();
        let forced = crate::store::User {
            must_change_password: true,
            ..user.clone()
        };
        assert_eq!(
            password_status(&forced, &none, clock.unix()),
            PasswordStatus {
                expires_in_days: None,
                warning: None,
                must_change: true
            }
        );
    }

    #[test]
    fn email_and_phone_shapes() {
        assert!(is_email("a@b.co"));
        assert!(!is_email("a@b"));
        assert!(!is_email("a b@c.de"));
        assert!(!is_email("@c.de"));
        assert!(is_e164("+14155550123"));
        assert!(!is_e164("14155550123"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+1234"));
    }
}
