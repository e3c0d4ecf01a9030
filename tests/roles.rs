//! Users and roles against a running CX: the role matrix over every
//! operation of the generated OpenAPI document, the audit log, token
//! revocation, password resets, the last admin and the login rate limit.

mod util;

use reqwest::{Client, Method};
use serde_json::{Value, json};
use tern::engine::transport;
use util::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct Cx {
    client: Client,
    url: String,
}

impl Cx {
    async fn call(
        &self,
        m: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .client
            .request(m.clone(), format!("{}{path}", self.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        } else if m == Method::POST || m == Method::PATCH {
            r = r.json(&json!({}));
        }
        let resp = r.send().await.unwrap();
        let st = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            st,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn login(&self, user: &str, pw: &str) -> (u16, Value) {
        self.call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"user": user, "password": pw, "kind": "cli"})),
        )
        .await
    }
}

/// What a caller of `role` must get from an operation needing `perm`:
/// `Some(status)` for a refusal, `None` when it must be let through (any
/// answer but 401, 403 or a server error).
fn expected(perm: &str, role: Option<&str>) -> Option<u16> {
    let rank = |r: &str| match r {
        "monitor" => 1,
        "operator" => 2,
        "admin" => 3,
        _ => unreachable!(),
    };
    match (perm, role) {
        ("public", _) => None,
        ("node", _) => Some(401),
        (_, None) => Some(401),
        ("read", Some(_)) => None,
        ("operate", Some(r)) => (rank(r) < 2).then_some(403),
        ("admin", Some(r)) => (rank(r) < 3).then_some(403),
        (p, _) => panic!("operation with unknown permission `{p}`"),
    }
}

#[test]
fn every_operation_answers_each_role_as_its_permission_says() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = config_file(
        dir,
        "cx.toml",
        "cx-data",
        "roles = [\"cx\"]\n[node]\nname = \"cx-host\"\n[cx]\napi_listen = \"127.0.0.1:0\"\nlogin_max_failures = 3\nlogin_window = \"10m\"\n",
    );
    let cx = Daemon::spawn(dir, "cx", &["serve", "--config", cfg.to_str().unwrap()]);
    let data = dir.join("cx-data");
    let url = wait_file(&data.join("cx.url"), 30, &cx);
    let ca = std::fs::read_to_string(data.join("pki/ca.crt")).unwrap();
    let cx = Cx {
        client: transport::client(&ca, None).unwrap(),
        url,
    };
    let admin = std::fs::read_to_string(data.join("cli-token"))
        .unwrap()
        .trim()
        .to_owned();
    let rt = runtime();
    rt.block_on(async {
        // Users of each role, each logged in.
        let mut tokens = vec![("admin", admin.clone())];
        for role in ["monitor", "operator"] {
            let (st, v) = cx
                .call(
                    Method::POST,
                    "/api/v1/users",
                    Some(&admin),
                    Some(
                        json!({"name": role, "role": role, "password": format!("{role}-password")}),
                    ),
                )
                .await;
            assert_eq!(st, 201, "{v}");
            assert_eq!(v["role"], role);
            let (st, v) = cx.login(role, &format!("{role}-password")).await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["role"], role);
            tokens.push((role, v["token"].as_str().unwrap().to_owned()));
        }
        // A duplicate name changes nothing.
        let (st, v) = cx
            .call(
                Method::POST,
                "/api/v1/users",
                Some(&admin),
                Some(json!({"name": "monitor", "role": "admin", "password": "something-long"})),
            )
            .await;
        assert_eq!((st, v["code"].as_str()), (409, Some("conflict")), "{v}");
        let (_, me) = cx
            .call(Method::GET, "/api/v1/whoami", Some(&tokens[1].1), None)
            .await;
        assert_eq!(me["role"], "monitor", "{me}");

        // The matrix. Logout revokes the token it carries: it goes last.
        let (st, doc) = cx
            .call(Method::GET, "/api/v1/openapi.json", None, None)
            .await;
        assert_eq!(st, 200);
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (m, o) in item.as_object().unwrap() {
                let perm = o["x-permission"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{m} {path} has no x-permission"));
                ops.push((
                    m.to_uppercase(),
                    path.clone(),
                    perm.to_owned(),
                    o["operationId"].as_str().unwrap().to_owned(),
                ));
            }
        }
        // Pinned here, apart from the table: widening who may call one of
        // these is a decision, made in this test as well as in the table.
        let by_perm = |p: &str| {
            let mut v: Vec<&str> = ops
                .iter()
                .filter(|o| o.2 == p)
                .map(|o| o.3.as_str())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            by_perm("public"),
            [
                "enroll",
                "getCa",
                "getEnrollCa",
                "getHealth",
                "getOpenApi",
                "login",
                "logout"
            ]
        );
        assert_eq!(
            by_perm("node"),
            ["heartbeat", "nodeSync", "renewNodeCertificate"]
        );
        assert_eq!(
            by_perm("admin"),
            [
                "addReceiver",
                "createEnrollmentToken",
                "createUser",
                "deleteUser",
                "listAudit",
                "listEnrollmentTokens",
                "listUsers",
                "removeReceiver",
                "revokeEnrollmentToken",
                "updateUser",
            ]
        );
        ops.sort_by_key(|(_, _, _, id)| id == "logout");
        assert!(ops.len() >= 50, "{} operations", ops.len());
        let mut principals: Vec<(Option<&str>, Option<&str>)> = vec![(None, None)];
        for (r, t) in &tokens {
            principals.push((Some(*r), Some(t.as_str())));
        }
        let mut checked = 0;
        for (role, token) in &principals {
            for (m, path, perm, id) in &ops {
                let concrete = path
                    .split('/')
                    .map(|s| {
                        if s.starts_with('{') {
                            "no-such-thing"
                        } else {
                            s
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                let (st, v) = cx.call(m.parse().unwrap(), &concrete, *token, None).await;
                let who = role.unwrap_or("anonymous");
                assert!(st < 500, "{who} {m} {path}: server error {st}: {v}");
                match expected(perm, *role) {
                    Some(want) => {
                        assert_eq!(st, want, "{who} {m} {path} ({id}, {perm}): {v}");
                        let code = if want == 401 {
                            "unauthorized"
                        } else {
                            "forbidden"
                        };
                        assert_eq!(v["code"], code, "{who} {id}: {v}");
                        assert!(
                            !v["action"].as_str().unwrap_or("").is_empty(),
                            "{who} {id}: no action: {v}"
                        );
                    }
                    None => assert!(
                        st != 401 && st != 403,
                        "{who} {m} {path} ({id}, {perm}) was refused: {st} {v}"
                    ),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, ops.len() * 4);
        // Logout (last) revoked each token it carried.
        for (role, t) in &tokens {
            let (st, _) = cx.call(Method::GET, "/api/v1/whoami", Some(t), None).await;
            assert_eq!(st, 401, "{role}'s token survived its logout");
        }
    });
}

#[test]
fn audit_tokens_passwords_last_admin_and_login_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = config_file(
        dir,
        "cx.toml",
        "cx-data",
        "roles = [\"cx\"]\n[node]\nname = \"cx-host\"\n[cx]\napi_listen = \"127.0.0.1:0\"\nlogin_max_failures = 3\nlogin_window = \"10m\"\n",
    );
    let d = Daemon::spawn(dir, "cx", &["serve", "--config", cfg.to_str().unwrap()]);
    let data = dir.join("cx-data");
    let url = wait_file(&data.join("cx.url"), 30, &d);
    let ca = std::fs::read_to_string(data.join("pki/ca.crt")).unwrap();
    let cx = Cx {
        client: transport::client(&ca, None).unwrap(),
        url,
    };
    let admin = std::fs::read_to_string(data.join("cli-token"))
        .unwrap()
        .trim()
        .to_owned();
    let rt = runtime();
    rt.block_on(async {
        for (name, role) in [("mon", "monitor"), ("op", "operator"), ("op2", "operator")] {
            let (st, v) = cx
                .call(
                    Method::POST,
                    "/api/v1/users",
                    Some(&admin),
                    Some(json!({"name": name, "role": role, "password": "long-enough-pw"})),
                )
                .await;
            assert_eq!(st, 201, "{v}");
        }
        let (_, v) = cx.login("mon", "long-enough-pw").await;
        let mon = v["token"].as_str().unwrap().to_owned();
        let (_, v) = cx.login("op", "long-enough-pw").await;
        let op = v["token"].as_str().unwrap().to_owned();

        // A refused call and an allowed one are both in the audit log,
        // with who, from where, what and the result; never a body.
        let (st, _) = cx
            .call(Method::POST, "/api/v1/enrollment-tokens", Some(&mon), None)
            .await;
        assert_eq!(st, 403);
        let (st, _) = cx
            .call(
                Method::POST,
                "/api/v1/enrollment-tokens",
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(st, 201);
        let (st, v) = cx
            .call(Method::GET, "/api/v1/audit?limit=1000", Some(&admin), None)
            .await;
        assert_eq!(st, 200, "{v}");
        let entries = v["entries"].as_array().unwrap();
        let found = |actor: &str, op: &str, status: u64| {
            entries.iter().any(|e| {
                e["actor"] == actor
                    && e["operation"] == op
                    && e["status"] == status
                    && e["from"] == "127.0.0.1"
                    && e["method"] == "POST"
            })
        };
        assert!(found("mon", "createEnrollmentToken", 403), "{v}");
        assert!(found("admin", "createEnrollmentToken", 201), "{v}");
        assert!(found("admin", "createUser", 201), "{v}");
        assert!(
            !v.to_string().contains("long-enough-pw"),
            "a password reached the audit log"
        );
        // Reads are not audited; the log pages newest first.
        assert!(entries.iter().all(|e| e["method"] != "GET"), "{v}");
        let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
        let (_, p1) = cx
            .call(Method::GET, "/api/v1/audit?limit=2", Some(&admin), None)
            .await;
        let before = p1["next_before"].as_u64().expect("more than two entries");
        let (_, p2) = cx
            .call(
                Method::GET,
                &format!("/api/v1/audit?limit=2&before={before}"),
                Some(&admin),
                None,
            )
            .await;
        assert!(p2["entries"][0]["seq"].as_u64().unwrap() < before, "{p2}");
        // Only admins read it.
        let (st, _) = cx.call(Method::GET, "/api/v1/audit", Some(&op), None).await;
        assert_eq!(st, 403);

        // An API token: listed by id (never the secret), works, revoked by id.
        let (st, t) = cx
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(&mon),
                Some(json!({"label": "report script", "ttl": "1d"})),
            )
            .await;
        assert_eq!(st, 201, "{t}");
        let script = t["token"].as_str().unwrap().to_owned();
        let id = t["id"].as_str().unwrap().to_owned();
        let (st, _) = cx
            .call(Method::GET, "/api/v1/pairs", Some(&script), None)
            .await;
        assert_eq!(st, 200);
        let (_, l) = cx
            .call(Method::GET, "/api/v1/tokens", Some(&mon), None)
            .await;
        assert!(
            l["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["id"] == id.as_str() && x["label"] == "report script"),
            "{l}"
        );
        assert!(
            !l.to_string().contains(&script),
            "a token secret was listed"
        );
        // Another user cannot revoke it, nor list everyone's.
        let (st, _) = cx
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{id}"),
                Some(&op),
                None,
            )
            .await;
        assert_eq!(st, 404);
        let (st, _) = cx
            .call(Method::GET, "/api/v1/tokens?all=true", Some(&op), None)
            .await;
        assert_eq!(st, 403);
        let (st, _) = cx
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{id}"),
                Some(&mon),
                None,
            )
            .await;
        assert_eq!(st, 200);
        let (st, _) = cx
            .call(Method::GET, "/api/v1/pairs", Some(&script), None)
            .await;
        assert_eq!(st, 401, "a revoked token still works");

        // A role change takes effect on the next call; a password reset ends sessions.
        let (st, v) = cx
            .call(
                Method::PATCH,
                "/api/v1/users/mon",
                Some(&admin),
                Some(json!({"role": "operator"})),
            )
            .await;
        assert_eq!((st, v["role"].as_str()), (200, Some("operator")), "{v}");
        let (st, _) = cx
            .call(Method::POST, "/api/v1/alerts/test", Some(&mon), None)
            .await;
        assert_eq!(st, 200, "the new role was not granted");
        let (st, _) = cx
            .call(
                Method::PATCH,
                "/api/v1/users/mon",
                Some(&admin),
                Some(json!({"password": "a-new-password"})),
            )
            .await;
        assert_eq!(st, 200);
        let (st, _) = cx
            .call(Method::GET, "/api/v1/whoami", Some(&mon), None)
            .await;
        assert_eq!(st, 401, "a password reset left a session open");
        // Bad input changes nothing.
        let (st, v) = cx
            .call(
                Method::PATCH,
                "/api/v1/users/mon",
                Some(&admin),
                Some(json!({"password": "short"})),
            )
            .await;
        assert_eq!((st, v["code"].as_str()), (400, Some("bad_request")), "{v}");
        let (st, _) = cx.login("mon", "a-new-password").await;
        assert_eq!(st, 200);
        // Changing one's own password needs the old one and keeps the session it came from.
        let (st, v) = cx
            .call(
                Method::POST,
                "/api/v1/me/password",
                Some(&op),
                Some(json!({"old_password": "wrong-one!", "new_password": "op-new-password"})),
            )
            .await;
        assert_eq!(st, 403, "{v}");
        let (st, _) = cx
            .call(
                Method::POST,
                "/api/v1/me/password",
                Some(&op),
                Some(json!({"old_password": "long-enough-pw", "new_password": "op-new-password"})),
            )
            .await;
        assert_eq!(st, 200);
        let (st, _) = cx
            .call(Method::GET, "/api/v1/whoami", Some(&op), None)
            .await;
        assert_eq!(st, 200);

        // The last admin stays admin; nobody removes themselves.
        let (st, v) = cx
            .call(
                Method::PATCH,
                "/api/v1/users/admin",
                Some(&admin),
                Some(json!({"role": "monitor"})),
            )
            .await;
        assert_eq!((st, v["code"].as_str()), (409, Some("last_admin")), "{v}");
        let (st, _) = cx
            .call(Method::DELETE, "/api/v1/users/admin", Some(&admin), None)
            .await;
        assert_eq!(st, 409);
        let (_, me) = cx
            .call(Method::GET, "/api/v1/whoami", Some(&admin), None)
            .await;
        assert_eq!(me["role"], "admin");

        // Login: after 3 failures for a name, even the right password waits
        // (429, rate_limited); other names are unaffected.
        for _ in 0..3 {
            let (st, _) = cx.login("op2", "not-the-password").await;
            assert_eq!(st, 401);
        }
        let (st, v) = cx.login("op2", "long-enough-pw").await;
        assert_eq!((st, v["code"].as_str()), (429, Some("rate_limited")), "{v}");
        assert!(v["action"].as_str().unwrap().contains("wait"), "{v}");
        let (st, _) = cx.login("mon", "a-new-password").await;
        assert_eq!(st, 200, "one name's failures locked out another");
        // Removing a user revokes their tokens.
        let (_, v) = cx.login("mon", "a-new-password").await;
        let mon2 = v["token"].as_str().unwrap().to_owned();
        let (st, _) = cx
            .call(Method::DELETE, "/api/v1/users/mon", Some(&admin), None)
            .await;
        assert_eq!(st, 200);
        let (st, _) = cx
            .call(Method::GET, "/api/v1/whoami", Some(&mon2), None)
            .await;
        assert_eq!(st, 401);
    });
}
