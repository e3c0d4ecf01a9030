//! `tern user …`, `tern passwd`, `tern api-token …`, `tern token …`
//! (enrollment) and `tern audit`: clients of the CX's users, tokens and
//! audit API.

use std::path::PathBuf;

use clap::Subcommand;

use super::client::Api;
use super::{Global, print_table, read_password};
use crate::api::auth::{
    ApiTokenList, AuditPage, AuditQuery, ChangePassword, CreateApiToken, CreateEnrollmentToken,
    CreateUser, EnrollmentTokenList, NewApiToken, NewEnrollmentToken, OkBody, UpdateUser, UserList,
    UserRole, UserView,
};

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Users and their roles.
    List,
    /// Add a user: admin (everything), operator (runs DR) or monitor (reads).
    Add {
        name: String,
        #[arg(long)]
        role: UserRole,
        /// Read the password from this file (else TERN_PASSWORD, else a prompt).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Change a user's role, or reset their password (revokes their tokens).
    Set {
        name: String,
        #[arg(long)]
        role: Option<UserRole>,
        /// Reset the password: read it from this file, or `-` for TERN_PASSWORD / a prompt.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Remove a user and revoke their tokens.
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ApiTokenCmd {
    /// A new API token for the logged-in user (for scripts and integrations), shown once.
    Create {
        /// What it is for.
        #[arg(long)]
        label: String,
        /// Lifetime, e.g. 30d (default: cx.api_token_ttl).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Your API tokens (admins: `--all` for everyone's).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by its id (from `api-token list`).
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a single-use enrollment token.
    Create {
        /// Lifetime, e.g. 30m, 1h, 1d (default: cx.enroll_token_ttl).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Enrollment tokens: usable, used and expired.
    List,
    /// Revoke an unused enrollment token.
    Revoke { id: String },
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// At most this many entries.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Entries older than this seq (paging).
    #[arg(long)]
    before: Option<u64>,
    /// Only this user's calls.
    #[arg(long)]
    actor: Option<String>,
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn user(cmd: UserCmd, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    match cmd {
        UserCmd::List => {
            let l: UserList = api.get_as("/api/v1/users").await?;
            if g.json {
                return print_json(&l.users);
            }
            let mut rows = vec![vec!["NAME".to_owned(), "ROLE".into(), "CREATED".into()]];
            for u in &l.users {
                rows.push(vec![u.name.clone(), u.role.to_string(), u.created.clone()]);
            }
            print_table(&rows);
        }
        UserCmd::Add {
            name,
            role,
            password_file,
        } => {
            let password = read_password(password_file.as_deref())?;
            let u: UserView = api
                .post_as(
                    "/api/v1/users",
                    &CreateUser {
                        name,
                        role,
                        password,
                    },
                )
                .await?;
            if g.json {
                return print_json(&u);
            }
            println!("user {} added with role {}", u.name, u.role);
        }
        UserCmd::Set {
            name,
            role,
            password_file,
        } => {
            let password = match password_file {
                None => None,
                Some(f) if f.as_os_str() == "-" => Some(read_password(None)?),
                Some(f) => Some(read_password(Some(&f))?),
            };
            let u: UserView = api
                .patch_as(
                    &format!("/api/v1/users/{}", enc(&name)),
                    &UpdateUser { role, password },
                )
                .await?;
            if g.json {
                return print_json(&u);
            }
            println!("user {} now has role {}", u.name, u.role);
        }
        UserCmd::Remove { name } => {
            api.delete(&format!("/api/v1/users/{}", enc(&name))).await?;
            if !g.json {
                println!("user {name} removed; their tokens are revoked");
            }
        }
    }
    Ok(())
}

/// `tern passwd`: change the logged-in user's own password.
pub async fn passwd(
    g: &Global,
    old_file: Option<PathBuf>,
    new_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    let old_password = match old_file {
        Some(f) => read_password(Some(&f))?,
        None => rpassword::prompt_password("old password: ")?,
    };
    let new_password = match new_file {
        Some(f) => read_password(Some(&f))?,
        None => rpassword::prompt_password("new password: ")?,
    };
    let _: OkBody = api
        .post_as(
            "/api/v1/me/password",
            &ChangePassword {
                old_password,
                new_password,
            },
        )
        .await?;
    println!("password changed; your other tokens are revoked");
    Ok(())
}

pub async fn api_token(cmd: ApiTokenCmd, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    match cmd {
        ApiTokenCmd::Create { label, ttl } => {
            let t: NewApiToken = api
                .post_as("/api/v1/tokens", &CreateApiToken { label, ttl })
                .await?;
            if g.json {
                return print_json(&t);
            }
            println!("token:   {}", t.token);
            println!("id:      {}", t.id);
            println!("expires: {}", t.expires);
            println!("shown once: send it as `Authorization: Bearer TOKEN`");
        }
        ApiTokenCmd::List { all } => {
            let l: ApiTokenList = api.get_query_as("/api/v1/tokens", &[("all", all)]).await?;
            if g.json {
                return print_json(&l.tokens);
            }
            let mut rows = vec![vec![
                "ID".to_owned(),
                "USER".into(),
                "KIND".into(),
                "LABEL".into(),
                "CREATED".into(),
                "EXPIRES".into(),
            ]];
            for t in &l.tokens {
                rows.push(vec![
                    format!("{}{}", t.id, if t.current { " *" } else { "" }),
                    t.user.clone(),
                    serde_json::to_value(t.kind)?
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    t.label.clone(),
                    t.created.clone(),
                    t.expires.clone().unwrap_or_else(|| "never".into()),
                ]);
            }
            print_table(&rows);
        }
        ApiTokenCmd::Revoke { id } => {
            api.delete(&format!("/api/v1/tokens/{}", enc(&id))).await?;
            if !g.json {
                println!("token {id} revoked");
            }
        }
    }
    Ok(())
}

pub async fn enrollment_token(cmd: TokenCmd, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    match cmd {
        TokenCmd::Create { ttl } => {
            let t: NewEnrollmentToken = api
                .post_as("/api/v1/enrollment-tokens", &CreateEnrollmentToken { ttl })
                .await?;
            if g.json {
                return print_json(&t);
            }
            println!("token:          {}", t.token);
            println!("expires:        {}", t.expires);
            println!("CA fingerprint: {}", t.ca_fingerprint);
            println!("single use. On the new node run:");
            println!(
                "  tern enroll --cx {} --token {} --config NODE.toml",
                api.base, t.token
            );
        }
        TokenCmd::List => {
            let l: EnrollmentTokenList = api.get_as("/api/v1/enrollment-tokens").await?;
            if g.json {
                return print_json(&l.tokens);
            }
            let mut rows = vec![vec![
                "ID".to_owned(),
                "STATE".into(),
                "BY".into(),
                "CREATED".into(),
                "EXPIRES".into(),
                "USED BY HOST".into(),
            ]];
            for t in &l.tokens {
                rows.push(vec![
                    t.id.clone(),
                    serde_json::to_value(t.state)?
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    t.created_by.clone(),
                    t.created.clone(),
                    t.expires.clone(),
                    t.used_by_host.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            print_table(&rows);
        }
        TokenCmd::Revoke { id } => {
            api.delete(&format!("/api/v1/enrollment-tokens/{}", enc(&id)))
                .await?;
            if !g.json {
                println!("enrollment token {id} revoked");
            }
        }
    }
    Ok(())
}

pub async fn audit(a: AuditArgs, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    let q = AuditQuery {
        limit: Some(a.limit),
        before: a.before,
        actor: a.actor,
    };
    let p: AuditPage = api.get_query_as("/api/v1/audit", &q).await?;
    if g.json {
        return print_json(&p);
    }
    let mut rows = vec![vec![
        "SEQ".to_owned(),
        "TIME".into(),
        "ACTOR".into(),
        "FROM".into(),
        "CALL".into(),
        "STATUS".into(),
    ]];
    for e in &p.entries {
        rows.push(vec![
            e.seq.to_string(),
            e.time.clone(),
            e.actor.clone(),
            e.from.clone().unwrap_or_else(|| "-".into()),
            format!("{} {}", e.method, e.path),
            match &e.code {
                Some(c) => format!("{} {c}", e.status),
                None => e.status.to_string(),
            },
        ]);
    }
    print_table(&rows);
    if let Some(b) = p.next_before {
        println!("(older: --before {b})");
    }
    Ok(())
}
