//! Users, roles, permissions, API and enrollment tokens, the audit log: the
//! bodies of `/api/v1/login`, `/users`, `/tokens`, `/enrollment-tokens` and
//! `/audit`.
//!
//! A role is a set of permissions; every operation of the API needs exactly
//! one permission, declared in the CX's operation table (`roles/cx/routes.rs`)
//! and enforced there, in one place, before any handler runs.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// What a user may do. Roles are ordered: each has every permission of the ones below it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    /// Reads everything but secrets and the audit log: pairs, jobs, alerts, trends, reports.
    Monitor,
    /// Runs DR: pairs, volumes, bookmarks, images, resyncs, jobs, alert acknowledgement.
    Operator,
    /// Everything: users, tokens, enrollment, alert receivers, the audit log.
    Admin,
}

impl UserRole {
    pub const ALL: [UserRole; 3] = [UserRole::Monitor, UserRole::Operator, UserRole::Admin];

    pub fn grants(self, p: Permission) -> bool {
        match p {
            Permission::Public => true,
            // Node calls are authorised by the node's certificate, never a user.
            Permission::Node => false,
            Permission::Read => true,
            Permission::Operate => self >= UserRole::Operator,
            Permission::Admin => self == UserRole::Admin,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Monitor => "monitor",
            UserRole::Operator => "operator",
            UserRole::Admin => "admin",
        }
    }
}

impl std::fmt::Display for UserRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for UserRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        UserRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`; use admin, operator or monitor"))
    }
}

/// The permission an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Anyone, unauthenticated (health, login, the CA, enrollment by token).
    Public,
    /// An enrolled node, by its client certificate.
    Node,
    /// Any user.
    Read,
    /// Operators and admins.
    Operate,
    /// Admins.
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Public => "public",
            Permission::Node => "node",
            Permission::Read => "read",
            Permission::Operate => "operate",
            Permission::Admin => "admin",
        }
    }
}

/// Who is calling the API: set by the CX's gate from the caller's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: UserRole,
    /// The id of the token the call carries (see [`ApiTokenView::id`]).
    pub token_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    /// `session` (default, expires after `cx.session_ttl`) or `cli` (30 days).
    #[serde(default)]
    pub kind: Option<TokenKind>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    pub user: String,
    pub role: UserRole,
    pub expires: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub role: UserRole,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OkBody {
    pub ok: bool,
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub name: String,
    pub role: UserRole,
    pub created: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1-64 letters, digits, `-`, `_`, `.` or `@`.
    pub name: String,
    pub role: UserRole,
    /// At least 8 characters.
    pub password: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default)]
    pub role: Option<UserRole>,
    /// A new password (at least 8 characters); the user's tokens are revoked with it.
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    pub old_password: String,
    pub new_password: String,
}

/// Kinds of API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A browser or `tern login` session; expires after `cx.session_ttl`.
    Session,
    /// A long-lived CLI or integration token.
    Cli,
    /// The CX host's own CLI token (`DATA/cli-token`).
    Local,
}

/// An API token as listed: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenView {
    /// Stable id to revoke it by (not the secret).
    pub id: String,
    pub user: String,
    pub kind: TokenKind,
    pub label: String,
    pub created: String,
    pub expires: Option<String>,
    /// This is the token the call was made with.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenList {
    pub tokens: Vec<ApiTokenView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiToken {
    /// What the token is for, e.g. "nightly report script".
    pub label: String,
    /// Lifetime like "90d"; none: `cx.api_token_ttl`.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A new API token: the secret is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewApiToken {
    pub id: String,
    pub token: String,
    pub expires: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenListQuery {
    /// Admins: every user's tokens, not only their own.
    #[serde(default)]
    pub all: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// Lifetime like "1h"; none: `cx.enroll_token_ttl`.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A new enrollment token: the secret is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewEnrollmentToken {
    pub token: String,
    pub id: String,
    pub expires: String,
    pub ca_fingerprint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnrollmentTokenState {
    Usable,
    Used,
    Expired,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentTokenView {
    pub id: String,
    pub state: EnrollmentTokenState,
    pub created_by: String,
    pub created: String,
    pub expires: String,
    pub used: Option<String>,
    pub used_by_host: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentTokenList {
    pub tokens: Vec<EnrollmentTokenView>,
}

/// One state-changing call, as the audit log keeps it. Bodies are never
/// kept: they may hold passwords and tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: String,
    /// The user, `node:HOSTID` for a node, or `-` when the caller was not identified.
    pub actor: String,
    pub role: Option<UserRole>,
    /// The caller's address.
    pub from: Option<String>,
    pub method: String,
    pub path: String,
    /// The operation id of the OpenAPI document, when the path named one.
    pub operation: Option<String>,
    pub status: u16,
    /// The error code when the call failed.
    pub code: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; none at the end.
    pub next_before: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many entries (1-1000, default 100).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Entries older than this seq.
    #[serde(default)]
    pub before: Option<u64>,
    /// Only this actor's calls.
    #[serde(default)]
    pub actor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_nested_sets_of_permissions() {
        use Permission::*;
        let table = [
            (UserRole::Monitor, [true, false, true, false, false]),
            (UserRole::Operator, [true, false, true, true, false]),
            (UserRole::Admin, [true, false, true, true, true]),
        ];
        for (role, want) in table {
            for (p, w) in [Public, Node, Read, Operate, Admin].into_iter().zip(want) {
                assert_eq!(role.grants(p), w, "{role} {p:?}");
            }
            assert_eq!(role.as_str().parse::<UserRole>().unwrap(), role);
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
        assert!("root".parse::<UserRole>().is_err());
    }
}
