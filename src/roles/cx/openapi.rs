//! The OpenAPI 3.1 description of the CX REST API, served at `/api/v1/openapi.json`.
//!
//! Kept beside the routes in `api.rs`; an integration test calls every path
//! listed here, so an endpoint cannot be documented without existing.

use serde_json::{Value, json};

fn err() -> Value {
    json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(schema: &str) -> Value {
    json!({"description": "ok", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tern configuration server API",
            "version": crate::VERSION,
            "description": "Control plane of the Tern CDP appliance. Authenticate with `Authorization: Bearer TOKEN` (from POST /api/v1/login or `tern login`) or the `tern_session` cookie."
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "tern_session"},
                "nodeCertificate": {"type": "mutualTLS", "description": "client certificate issued by the CX CA at enrollment"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Health": {"type": "object", "required": ["status", "version", "roles", "host_id", "uptime_s"], "properties": {
                    "status": {"type": "string", "enum": ["ok"]},
                    "version": {"type": "string"},
                    "roles": {"type": "array", "items": {"$ref": "#/components/schemas/Role"}},
                    "host_id": {"type": "string"},
                    "uptime_s": {"type": "integer"}}},
                "Role": {"type": "string", "enum": ["cx", "ps", "mt", "agent", "rx"]},
                "LoginRequest": {"type": "object", "required": ["user", "password"], "properties": {
                    "user": {"type": "string"}, "password": {"type": "string"},
                    "kind": {"type": "string", "enum": ["session", "cli"]}}},
                "LoginResponse": {"type": "object", "properties": {
                    "token": {"type": "string"}, "user": {"type": "string"}, "expires": {"type": "string", "format": "date-time"}}},
                "WhoAmI": {"type": "object", "properties": {"user": {"type": "string"}, "role": {"type": "string"}}},
                "Host": {"type": "object", "properties": {
                    "host_id": {"type": "string"}, "name": {"type": "string"},
                    "roles": {"type": "array", "items": {"$ref": "#/components/schemas/Role"}},
                    "version": {"type": ["string", "null"]},
                    "enrolled": {"type": "string", "format": "date-time"},
                    "last_heartbeat": {"type": ["string", "null"], "format": "date-time"},
                    "heartbeat_age_s": {"type": ["number", "null"]},
                    "overdue": {"type": "boolean"},
                    "data_addr": {"type": ["string", "null"]},
                    "cert_expires": {"type": ["string", "null"], "format": "date-time", "description": "the node renews its certificate when two thirds of its life have passed"}}},
                "HostList": {"type": "object", "properties": {"hosts": {"type": "array", "items": {"$ref": "#/components/schemas/Host"}}}},
                "TokenRequest": {"type": "object", "properties": {"ttl": {"type": "string", "examples": ["1h"]}}},
                "TokenResponse": {"type": "object", "properties": {
                    "token": {"type": "string"}, "id": {"type": "string"},
                    "expires": {"type": "string", "format": "date-time"}, "ca_fingerprint": {"type": "string"}}},
                "Ca": {"type": "object", "properties": {"ca_pem": {"type": "string"}, "fingerprint": {"type": "string"}}},
                "EnrollCa": {"type": "object", "properties": {
                    "ca_pem": {"type": "string"}, "fingerprint": {"type": "string"},
                    "mac": {"type": "string", "description": "hex HMAC-SHA256(SHA256(\"tern-enroll-v1:\" || secret), nonce || CA DER)"}}},
                "EnrollRequest": {"type": "object", "required": ["token", "csr_pem", "name", "roles"], "properties": {
                    "token": {"type": "string"}, "csr_pem": {"type": "string"}, "name": {"type": "string"},
                    "roles": {"type": "array", "items": {"$ref": "#/components/schemas/Role"}}}},
                "RenewRequest": {"type": "object", "required": ["csr_pem"], "properties": {"csr_pem": {"type": "string"}}},
                "RenewResponse": {"type": "object", "properties": {"cert_pem": {"type": "string"}}},
                "EnrollResponse": {"type": "object", "properties": {
                    "host_id": {"type": "string"}, "cert_pem": {"type": "string"}, "ca_pem": {"type": "string"}}},
                "Heartbeat": {"type": "object", "required": ["name", "roles", "version"], "properties": {
                    "name": {"type": "string"}, "version": {"type": "string"},
                    "roles": {"type": "array", "items": {"$ref": "#/components/schemas/Role"}},
                    "data_addr": {"type": ["string", "null"]}}},
                "HeartbeatAck": {"type": "object", "properties": {"interval_ms": {"type": "integer"}}},
                "SyncRequest": {"type": "object", "required": ["known_version", "wait_ms", "report"], "description": "a node's report (volumes, per-pair agent/PS/MT status, command results) and the config version it has"},
                "SyncResponse": {"type": "object", "description": "config version, the pairs and volumes this node has a part in, pending bookmark commands, the CX's host id"},
                "CreatePair": {"type": "object", "required": ["name", "source", "ps", "target"], "properties": {
                    "name": {"type": "string"}, "source": {"type": "string", "description": "AGENTHOST:VOLUME"},
                    "ps": {"type": "string"}, "target": {"type": "string", "description": "MTHOST or MTHOST:PATH"},
                    "compression": {"type": "string", "enum": ["none", "ps", "source"]},
                    "zstd_level": {"type": "integer"}, "retention": {"type": "string", "examples": ["24h"]},
                    "max_bytes": {"type": "integer"},
                    "on_full": {"type": "string", "enum": ["prune", "stop"], "description": "at the journal's space limit: drop the oldest points (prune) or stop taking changes until space returns (stop)"},
                    "rpo_threshold": {"type": "string", "examples": ["30m"]},
                    "priority": {"type": "integer"}}},
                "Pair": {"type": "object", "description": "definition, state (differential-sync, resync-queued, resync-step-1, resync-step-2, bitmap, resync-required, stopped, connecting, paused), stopped (why: retention disk full), progress_pct, rpo_s, data in transit per stage, latest/oldest consistent point, per-role status"},
                "PairList": {"type": "object", "properties": {"pairs": {"type": "array", "items": {"$ref": "#/components/schemas/Pair"}}}},
                "BookmarkRequest": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"}, "kind": {"type": "string", "enum": ["user", "fs", "app"]}}},
                "ImageRequest": {"type": "object", "required": ["to"], "additionalProperties": false, "properties": {
                    "at": {"type": "string", "description": "latest (default), oldest, seq:N, tag:NAME, time:RFC3339"},
                    "to": {"type": "string", "description": "absolute path of the image on the MT host: a file (written as NAME.ID.tern-partial, renamed when whole) or a device"}}},
                "HashRequest": {"type": "object", "additionalProperties": false, "properties": {
                    "at": {"type": "string", "description": "latest (default), oldest, seq:N, tag:NAME, time:RFC3339"}}},
                "Points": {"type": "object", "description": "pair, latest and oldest consistent point ({seq, ts_us, time}), last_applied_seq, bookmarks"},
                "Job": {"type": "object", "required": ["id", "kind", "target", "actor", "state", "created", "progress", "params", "steps", "log", "cancel_requested", "attempts", "rev"], "properties": {
                    "id": {"type": "integer"},
                    "kind": {"type": "string", "enum": ["image", "hash"]},
                    "target": {"type": "string", "examples": ["pair/db"]},
                    "actor": {"type": "string"},
                    "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
                    "created": {"type": "string", "format": "date-time"},
                    "started": {"type": ["string", "null"], "format": "date-time"},
                    "finished": {"type": ["string", "null"], "format": "date-time"},
                    "progress": {"type": "object", "properties": {
                        "done_bytes": {"type": "integer"}, "total_bytes": {"type": "integer"},
                        "rate_bps": {"type": ["number", "null"]}, "eta_s": {"type": ["number", "null"]}}},
                    "params": {"type": "object", "properties": {"pair": {"type": "string"}, "at": {"type": "string"}, "to": {"type": ["string", "null"]}}},
                    "steps": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "state": {"type": "string"},
                        "started": {"type": ["string", "null"]}, "finished": {"type": ["string", "null"]}}}},
                    "log": {"type": "array", "items": {"type": "object", "properties": {
                        "time": {"type": "string"}, "level": {"type": "string"}, "message": {"type": "string"}}}},
                    "result": {"type": ["object", "null"], "properties": {
                        "point": {"type": "object"}, "blake3": {"type": "string"}, "size": {"type": "integer"}, "to": {"type": ["string", "null"]}}},
                    "error": {"type": ["object", "null"], "properties": {
                        "code": {"type": "string", "enum": ["node_unreachable", "node_busy", "node_restarted", "pair_gone", "task_failed", "rejected", "cx_error"]},
                        "message": {"type": "string"}, "action": {"type": "string"}}},
                    "cancel_requested": {"type": "boolean"},
                    "attempts": {"type": "integer"},
                    "rev": {"type": "integer", "description": "changes with every update; pass it back as ?rev= to wait for the next"}}},
                "JobPage": {"type": "object", "required": ["jobs"], "properties": {
                    "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                    "next": {"type": ["integer", "null"], "description": "pass as ?before= for the next page"}}},
                "Volume": {"type": "object", "required": ["host", "name", "path"], "properties": {
                    "host": {"type": "string"}, "name": {"type": "string"}, "path": {"type": "string"},
                    "capture": {"type": "string", "enum": ["nbd", "fuse", "scan"]},
                    "listen": {"type": "string"}, "mount": {"type": "string"}, "size": {"type": "integer"},
                    "fs_mount": {"type": "string"}}},
                "VolumeList": {"type": "object", "properties": {"volumes": {"type": "array", "items": {"$ref": "#/components/schemas/Volume"}}}},
                "Alert": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "key": {"type": "string"},
                    "rule": {"type": "string", "enum": ["rpo", "heartbeat-lost", "bitmap-mode", "resync-required", "flow-controlled", "retention-window", "retention-space", "disk-free", "pair-error", "cert-expiry"]},
                    "severity": {"type": "string", "enum": ["critical", "major", "minor", "warning", "info"]},
                    "host": {"type": "string"}, "pair": {"type": "string"},
                    "message": {"type": "string"}, "action": {"type": "string", "description": "what to do"},
                    "state": {"type": "string", "enum": ["active", "cleared"]},
                    "first_seen": {"type": "string", "format": "date-time"}, "last_seen": {"type": "string", "format": "date-time"},
                    "cleared": {"type": ["string", "null"], "format": "date-time"},
                    "count": {"type": "integer", "description": "notifications sent"},
                    "acked_by": {"type": ["string", "null"]}}},
                "AlertList": {"type": "object", "properties": {"alerts": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}}}},
                "Receiver": {"type": "object", "properties": {
                    "id": {"type": "string"}, "url": {"type": "string", "description": "without secrets"},
                    "kind": {"type": "string", "enum": ["snmp", "snmp-inform", "smtp"]}, "digest": {"type": "boolean"},
                    "has_password": {"type": "boolean"}, "created": {"type": "string", "format": "date-time"},
                    "sent": {"type": "integer"}, "last_ok": {"type": ["string", "null"]}, "last_error": {"type": ["string", "null"]}}},
                "ReceiverList": {"type": "object", "properties": {"receivers": {"type": "array", "items": {"$ref": "#/components/schemas/Receiver"}}}},
                "AddReceiver": {"type": "object", "required": ["url"], "properties": {
                    "url": {"type": "string", "examples": ["snmp://public@noc.example.net:162", "smtp://ops@mail.example.net:587?to=noc@example.net&tls=starttls"]},
                    "password": {"type": "string", "description": "SMTP password (stored, never shown)"}}},
                "Delivery": {"type": "object", "properties": {"results": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "url": {"type": "string"}, "ok": {"type": "boolean"}, "error": {"type": ["string", "null"]}}}}}},
                "TrendsList": {"type": "object", "properties": {"metrics": {"type": "array", "items": {"type": "string"}},
                    "tiers": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "view": {"type": "string"}, "res_s": {"type": "integer"}, "retention_s": {"type": "integer"}, "epoch_s": {"type": "integer"}}}}}},
                "Trend": {"type": "object", "properties": {
                    "metric": {"type": "string"}, "resolution": {"type": "string"}, "step_s": {"type": "integer"},
                    "cf": {"type": "string", "enum": ["avg", "max"]}, "start": {"type": "integer"}, "end": {"type": "integer"},
                    "series": {"type": "array", "items": {"type": "object", "properties": {
                        "metric": {"type": "string"}, "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "points": {"type": "array", "items": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "number"}]}}}}}}},
                "HealthReport": {"type": "object", "properties": {
                    "start": {"type": "string", "format": "date"}, "end": {"type": "string", "format": "date"},
                    "rows": {"type": "array", "items": {"$ref": "#/components/schemas/HealthRow"}},
                    "totals": {"type": "array", "items": {"$ref": "#/components/schemas/HealthRow"}}}},
                "HealthRow": {"type": "object", "description": "one pair, one UTC day (date `total` in totals)", "properties": {
                    "date": {"type": "string"}, "pair": {"type": "string"}, "source": {"type": "string"},
                    "changes_mb_compressed": {"type": "number"}, "changes_mb": {"type": "number"},
                    "retention_policy_days": {"type": "number"}, "retention_available_days": {"type": "number"},
                    "rpo_threshold_min": {"type": "number"}, "rpo_max_min": {"type": "number"},
                    "rpo_not_met_hours": {"type": "number"}, "flow_controlled_hours": {"type": "number"},
                    "retention_log_reset": {"type": "boolean"}, "consistency_points": {"type": "integer"},
                    "protection_coverage_pct": {"type": "number"}, "observed_hours": {"type": "number"}}}
            }
        },
        "paths": {
            "/api/v1/health": {"get": {"summary": "liveness, version and roles of this process", "security": [],
                "responses": {"200": ok("Health")}}},
            "/api/v1/openapi.json": {"get": {"summary": "this document", "security": [],
                "responses": {"200": {"description": "OpenAPI document"}}}},
            "/api/v1/login": {"post": {"summary": "exchange a password for a token (and a session cookie)", "security": [],
                "requestBody": body("LoginRequest"), "responses": {"200": ok("LoginResponse"), "401": err()}}},
            "/api/v1/logout": {"post": {"summary": "revoke the presented token", "responses": {"200": {"description": "ok"}}}},
            "/api/v1/whoami": {"get": {"summary": "the caller", "security": [{"bearer": []}, {"session": []}],
                "responses": {"200": ok("WhoAmI"), "401": err()}}},
            "/api/v1/hosts": {"get": {"summary": "registered hosts with heartbeat state", "security": [{"bearer": []}, {"session": []}],
                "responses": {"200": ok("HostList"), "401": err()}}},
            "/api/v1/tokens": {"post": {"summary": "create a single-use enrollment token (admin)", "security": [{"bearer": []}, {"session": []}],
                "requestBody": body("TokenRequest"), "responses": {"200": ok("TokenResponse"), "401": err(), "403": err()}}},
            "/api/v1/pki/ca": {"get": {"summary": "the CA certificate and its fingerprint", "security": [],
                "responses": {"200": ok("Ca")}}},
            "/api/v1/enroll/ca": {"get": {"summary": "enrollment step 1: the CA, authenticated by a MAC keyed with the token", "security": [],
                "parameters": [
                    {"name": "token_id", "in": "query", "required": true, "schema": {"type": "string"}},
                    {"name": "nonce", "in": "query", "required": true, "schema": {"type": "string", "minLength": 16, "maxLength": 128}}],
                "responses": {"200": ok("EnrollCa"), "403": err(), "409": err(), "410": err()}}},
            "/api/v1/enroll": {"post": {"summary": "enrollment step 2: spend the token, get a certificate", "security": [],
                "requestBody": body("EnrollRequest"),
                "responses": {"200": ok("EnrollResponse"), "400": err(), "403": err(), "409": err(), "410": err()}}},
            "/api/v1/heartbeat": {"post": {"summary": "a node reports in (client certificate required)", "security": [{"nodeCertificate": []}],
                "requestBody": body("Heartbeat"), "responses": {"200": ok("HeartbeatAck"), "401": err(), "403": err()}}},
            "/api/v1/node/renew": {"post": {"summary": "a node renews its certificate: a new key, the same host id (client certificate required)", "security": [{"nodeCertificate": []}],
                "requestBody": body("RenewRequest"), "responses": {"200": ok("RenewResponse"), "400": err(), "401": err(), "403": err()}}},
            "/api/v1/node/sync": {"post": {"summary": "a node reports and long-polls for its pairs, volumes and commands (client certificate required)", "security": [{"nodeCertificate": []}],
                "requestBody": body("SyncRequest"), "responses": {"200": ok("SyncResponse"), "401": err()}}},
            "/api/v1/pairs": {
                "get": {"summary": "pairs with state, RPO and transit", "security": [{"bearer": []}, {"session": []}],
                    "responses": {"200": ok("PairList"), "401": err()}},
                "post": {"summary": "create a pair", "security": [{"bearer": []}, {"session": []}],
                    "requestBody": body("CreatePair"), "responses": {"201": ok("Pair"), "400": err(), "404": err(), "409": err()}}},
            "/api/v1/pairs/{name}": {
                "get": {"summary": "one pair", "security": [{"bearer": []}, {"session": []}],
                    "responses": {"200": ok("Pair"), "404": err()}},
                "delete": {"summary": "delete a pair (the replica stays on the MT)", "security": [{"bearer": []}, {"session": []}],
                    "responses": {"200": {"description": "deleted"}, "404": err()}}},
            "/api/v1/pairs/{name}/pause": {"post": {"summary": "stop sending; changes go to the bitmap", "security": [{"bearer": []}, {"session": []}],
                "responses": {"200": ok("Pair"), "404": err()}}},
            "/api/v1/pairs/{name}/resume": {"post": {"summary": "resume sending", "security": [{"bearer": []}, {"session": []}],
                "responses": {"200": ok("Pair"), "404": err()}}},
            "/api/v1/pairs/{name}/resync": {"post": {"summary": "start a full (fast) resync", "security": [{"bearer": []}, {"session": []}],
                "responses": {"200": ok("Pair"), "404": err()}}},
            "/api/v1/pairs/{name}/bookmark": {"post": {"summary": "insert a bookmark at the agent; waits for its seq", "security": [{"bearer": []}, {"session": []}],
                "requestBody": body("BookmarkRequest"), "responses": {"200": {"description": "pair, bookmark, seq"}, "404": err(), "409": err(), "503": err(), "504": err()}}},
            "/api/v1/pairs/{name}/points": {"get": {"summary": "the replica's recovery points, from its MT", "security": [{"bearer": []}, {"session": []}],
                "responses": {"200": ok("Points"), "404": err(), "502": err(), "503": err()}}},
            "/api/v1/pairs/{name}/image": {"post": {"summary": "start a job writing the image at a point on the MT host", "security": [{"bearer": []}, {"session": []}],
                "requestBody": body("ImageRequest"), "responses": {"202": ok("Job"), "400": err(), "404": err(), "503": err()}}},
            "/api/v1/pairs/{name}/hash": {"post": {"summary": "start a job computing the BLAKE3 of the image at a point, on the MT", "security": [{"bearer": []}, {"session": []}],
                "requestBody": body("HashRequest"), "responses": {"202": ok("Job"), "400": err(), "404": err(), "503": err()}}},
            "/api/v1/jobs": {"get": {"summary": "jobs, newest first", "security": [{"bearer": []}, {"session": []}],
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                    {"name": "before", "in": "query", "schema": {"type": "integer"}, "description": "jobs with ids below this (the previous page's next)"},
                    {"name": "state", "in": "query", "schema": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}},
                    {"name": "kind", "in": "query", "schema": {"type": "string", "enum": ["image", "hash"]}},
                    {"name": "target", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": ok("JobPage"), "400": err()}}},
            "/api/v1/jobs/{id}": {"get": {"summary": "one job; with ?rev= and ?wait_ms= (at most 30000) a long poll for its next change", "security": [{"bearer": []}, {"session": []}],
                "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
                    {"name": "rev", "in": "query", "schema": {"type": "integer"}},
                    {"name": "wait_ms", "in": "query", "schema": {"type": "integer", "maximum": 30000}}],
                "responses": {"200": ok("Job"), "404": err()}}},
            "/api/v1/jobs/{id}/cancel": {"post": {"summary": "ask a job to stop; it ends cancelled within a poll of its node", "security": [{"bearer": []}, {"session": []}],
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "responses": {"202": ok("Job"), "404": err(), "409": err()}}},
            "/api/v1/volumes": {
                "get": {"summary": "agent volumes (reported and added)", "security": [{"bearer": []}, {"session": []}],
                    "responses": {"200": ok("VolumeList")}},
                "post": {"summary": "add a volume to an agent", "security": [{"bearer": []}, {"session": []}],
                    "requestBody": body("Volume"), "responses": {"201": ok("Volume"), "400": err(), "404": err()}}},
            "/api/v1/alerts": {"get": {"summary": "active alerts (?all=true: cleared ones too, newest first)", "security": [{"bearer": []}, {"session": []}],
                "parameters": [{"name": "all", "in": "query", "schema": {"type": "boolean"}}],
                "responses": {"200": ok("AlertList")}}},
            "/api/v1/alerts/{id}/ack": {"post": {"summary": "acknowledge: no more repeats (it still clears)", "security": [{"bearer": []}, {"session": []}],
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "responses": {"200": ok("Alert"), "404": err()}}},
            "/api/v1/alerts/test": {"post": {"summary": "send a test notification to every receiver now", "security": [{"bearer": []}, {"session": []}],
                "responses": {"200": ok("Delivery")}}},
            "/api/v1/alerts/digest": {"post": {"summary": "send the daily digest to every digest receiver now", "security": [{"bearer": []}, {"session": []}],
                "responses": {"200": ok("Delivery")}}},
            "/api/v1/alerts/receivers": {
                "get": {"summary": "notification receivers", "security": [{"bearer": []}, {"session": []}],
                    "responses": {"200": ok("ReceiverList")}},
                "post": {"summary": "add a receiver (admin)", "security": [{"bearer": []}, {"session": []}],
                    "requestBody": body("AddReceiver"), "responses": {"201": ok("Receiver"), "400": err(), "403": err()}}},
            "/api/v1/alerts/receivers/{id}": {"delete": {"summary": "remove a receiver (admin)", "security": [{"bearer": []}, {"session": []}],
                "responses": {"200": {"description": "removed"}, "404": err()}}},
            "/api/v1/trends": {"get": {"summary": "metrics and resolutions kept", "security": [{"bearer": []}, {"session": []}],
                "responses": {"200": ok("TrendsList")}}},
            "/api/v1/trends/{metric}": {"get": {"summary": "points of a metric (like rrdtool fetch)", "security": [{"bearer": []}, {"session": []}],
                "parameters": [
                    {"name": "host", "in": "query", "schema": {"type": "string"}},
                    {"name": "pair", "in": "query", "schema": {"type": "string"}},
                    {"name": "start", "in": "query", "schema": {"type": "string", "examples": ["-1d", "2026-11-27", "1764201600"]}},
                    {"name": "end", "in": "query", "schema": {"type": "string", "examples": ["now"]}},
                    {"name": "resolution", "in": "query", "schema": {"type": "string", "enum": ["raw", "1m", "10m", "1h", "day", "week", "month", "year"]}},
                    {"name": "cf", "in": "query", "schema": {"type": "string", "enum": ["avg", "max"]}}],
                "responses": {"200": ok("Trend"), "400": err(), "404": err()}}},
            "/api/v1/reports/health": {"get": {"summary": "health report: per pair per UTC day (?format=csv for CSV)", "security": [{"bearer": []}, {"session": []}],
                "parameters": [
                    {"name": "pair", "in": "query", "schema": {"type": "string"}},
                    {"name": "start", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {"name": "end", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv"]}}],
                "responses": {"200": ok("HealthReport"), "400": err()}}},
            "/metrics": {"get": {"summary": "everything the CX knows, in the Prometheus text format (a token, any user)", "security": [{"bearer": []}],
                "responses": {"200": {"description": "text/plain; version=0.0.4"}}}}
        }
    })
}
