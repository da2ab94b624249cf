//! What the database did during a benchmark window, read from Postgres itself: the
//! statements run (from `pg_stat_statements`, by query id, so the raw baseline can be checked
//! to issue exactly the same SQL as Keygate), the tables read by sequential scan
//! (`pg_stat_user_tables`), and the set-up of databases for the baselines (Keygate's own
//! migrations, seeded rows).

use anyhow::{Context, Result, bail};
use sqlx::{AnyConnection, Connection, Row};
use std::collections::BTreeMap;
use std::path::Path;

/// Connects to a database URL (Postgres through sqlx's `Any` driver).
pub async fn connect(url: &str) -> Result<AnyConnection> {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(url)
        .await
        .with_context(|| format!("connect to {}", redact(url)))
}

fn redact(url: &str) -> &str {
    url.split_once('@').map_or(url, |(_, host)| host)
}

/// The statements one database ran: calls by normalised text. (Not by query id: that hashes
/// the tables' object ids, which differ between two databases with the same schema.)
#[derive(Debug, Clone, Default)]
pub struct Statements(BTreeMap<String, (String, i64)>);

/// Transaction control statements.
const CONTROL: [&str; 2] = ["BEGIN", "COMMIT"];

/// `BEGIN` and `COMMIT` per transaction of a pgbench script (one transaction is one
/// operation).
pub fn script_control(script: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in script.lines() {
        let statement = normalise(line);
        if CONTROL.contains(&statement.as_str()) {
            *out.entry(statement).or_insert(0.0) += 1.0;
        }
    }
    out
}

/// A statement's text with whitespace collapsed and every parameter or number literal as `?`
/// (`pg_stat_statements` numbers them per query, and leaves some constants as written).
fn normalise(q: &str) -> String {
    let q = q
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = String::with_capacity(q.len());
    let mut chars = q.chars().peekable();
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        let starts_number = c.is_ascii_digit() && !(prev.is_alphanumeric() || prev == '_');
        if (c == '$' && chars.peek().is_some_and(char::is_ascii_digit)) || starts_number {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
            prev = '?';
        } else {
            out.push(c);
            prev = c;
        }
    }
    out
}

/// Forgets every statement recorded so far (on the whole server).
pub async fn reset(server: &str) -> Result<()> {
    let mut conn = connect(server).await?;
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&mut conn)
        .await
        .context("pg_stat_statements_reset() (is pg_stat_statements preloaded?)")?;
    Ok(())
}

/// The statements run in database `db` since the last reset.
pub async fn statements(server: &str, db: &str) -> Result<Statements> {
    let mut conn = connect(server).await?;
    let rows = sqlx::query(
        "SELECT s.query, s.calls FROM pg_stat_statements s \
         JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
    )
    .bind(db)
    .fetch_all(&mut conn)
    .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let query: String = r.try_get("query")?;
        let calls: i64 = r.try_get("calls")?;
        out.entry(normalise(&query)).or_insert((query, 0)).1 += calls;
    }
    Ok(Statements(out))
}

impl Statements {
    /// Each statement that ran at least `min_per_op` times per operation, with its calls per
    /// operation (rarer ones are background work: purges, key loads).
    pub fn per_op(&self, ops: u64, min_per_op: f64) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .map(|(q, (_, calls))| (q.clone(), *calls as f64 / ops.max(1) as f64))
            .filter(|(_, n)| *n >= min_per_op)
            .collect()
    }

    /// The texts as recorded (with `$n` parameters) of the statements `per_op` lists.
    pub fn per_op_raw(&self, ops: u64, min_per_op: f64) -> Vec<String> {
        self.0
            .values()
            .filter(|(_, calls)| *calls as f64 / ops.max(1) as f64 >= min_per_op)
            .map(|(q, _)| q.clone())
            .collect()
    }

    /// Fails unless `raw` ran the same statements as `self`, as often per operation (within
    /// 5 %): the check that a baseline measures the work Keygate does, not other work.
    /// `pg_stat_statements` does not see pgbench's `BEGIN` and `COMMIT` (sent as prepared
    /// statements), so the baseline's are counted in its script (`script_control`).
    pub fn same_work(
        &self,
        ops: u64,
        raw: &Statements,
        raw_ops: u64,
        script_control: &BTreeMap<String, f64>,
    ) -> Result<()> {
        let ours = self.per_op(ops, 0.5);
        let mut theirs = raw.per_op(raw_ops, 0.5);
        theirs.retain(|q, _| !CONTROL.contains(&q.as_str()));
        theirs.extend(script_control.clone());
        let mut problems = Vec::new();
        for (q, n) in &ours {
            match theirs.get(q) {
                None => problems.push(format!("missing from the baseline ({n:.2}/op): {q}")),
                Some(m) if (m - n).abs() > 0.05 * n => problems.push(format!(
                    "{n:.2}/op in Keygate, {m:.2}/op in the baseline: {q}"
                )),
                Some(_) => {}
            }
        }
        for (q, m) in &theirs {
            if !ours.contains_key(q) {
                problems.push(format!("only in the baseline ({m:.2}/op): {q}"));
            }
        }
        if !problems.is_empty() {
            bail!(
                "the baseline does not issue Keygate's statements:\n  {}",
                problems.join("\n  ")
            );
        }
        Ok(())
    }

    /// Lines `calls/op  statement` for the report.
    pub fn describe(&self, ops: u64) -> String {
        self.per_op(ops, 0.5)
            .iter()
            .map(|(q, n)| format!("  {n:5.2}  {q}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The tables that the generic plans of `statements` (as `pg_stat_statements` wrote them,
/// `$n` parameters) read by sequential scan on the database at `url`, each with the number
/// of rows the planner expects there.
pub async fn sequential_scans(url: &str, statements: &[String]) -> Result<Vec<String>> {
    let mut conn = connect(url).await?;
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
        .execute(&mut conn)
        .await?;
    let mut found = std::collections::BTreeSet::new();
    for q in statements {
        if CONTROL.contains(&normalise(q).as_str()) {
            continue;
        }
        let params = (1..=100)
            .take_while(|n| q.contains(&format!("${n}")))
            .count();
        sqlx::raw_sql(&format!("PREPARE kg_plan AS {q}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("PREPARE {q}"))?;
        let args = vec!["NULL"; params].join(", ");
        let explain = if params == 0 {
            "EXPLAIN EXECUTE kg_plan".to_owned()
        } else {
            format!("EXPLAIN EXECUTE kg_plan({args})")
        };
        let rows = sqlx::raw_sql(&explain).fetch_all(&mut conn).await?;
        for r in rows {
            let line: String = r.try_get(0)?;
            if let Some(rest) = line.split("Seq Scan on ").nth(1) {
                let table = rest.split_whitespace().next().unwrap_or_default();
                let rows = rest
                    .split("rows=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("?");
                found.insert(format!("{table} (planned rows {rows})"));
            }
        }
        sqlx::raw_sql("DEALLOCATE kg_plan")
            .execute(&mut conn)
            .await?;
    }
    Ok(found.into_iter().collect())
}

/// Applies Keygate's Postgres migrations, in order, to the database at `url` (a baseline's
/// database gets exactly the schema and indexes the server's has).
pub async fn migrate(url: &str, migrations: &Path) -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(migrations)
        .with_context(|| format!("read {}", migrations.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut conn = connect(url).await?;
    for f in files {
        let sql = std::fs::read_to_string(&f)?;
        sqlx::raw_sql(&sql)
            .execute(&mut conn)
            .await
            .with_context(|| format!("apply {}", f.display()))?;
    }
    Ok(())
}

/// Runs SQL (set-up and seeding) on the database at `url`.
pub async fn run(url: &str, sql: &str) -> Result<()> {
    let mut conn = connect(url).await?;
    sqlx::raw_sql(sql).execute(&mut conn).await?;
    Ok(())
}

/// The database name in a Postgres URL.
pub fn database_name(url: &str) -> &str {
    let path = url.rsplit_once('/').map_or("", |(_, db)| db);
    path.split_once('?').map_or(path, |(db, _)| db)
}

#[cfg(test)]
mod tests {
    #[test]
    fn normalise_makes_parameters_and_numbers_alike() {
        assert_eq!(
            super::normalise("SELECT  1 FROM t\n WHERE a = $12 AND b2 = 'x'"),
            "SELECT ? FROM t WHERE a = ? AND b2 = 'x'"
        );
        assert_eq!(
            super::normalise("SELECT $2 FROM t WHERE a = $1"),
            super::normalise("SELECT 1 FROM t WHERE a = $3")
        );
    }
}
