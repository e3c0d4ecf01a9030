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
                    "data_addr": {"type": ["string", "null"]}}},
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
                "EnrollResponse": {"type": "object", "properties": {
                    "host_id": {"type": "string"}, "cert_pem": {"type": "string"}, "ca_pem": {"type": "string"}}},
                "Heartbeat": {"type": "object", "required": ["name", "roles", "version"], "properties": {
                    "name": {"type": "string"}, "version": {"type": "string"},
                    "roles": {"type": "array", "items": {"$ref": "#/components/schemas/Role"}},
                    "data_addr": {"type": ["string", "null"]}}},
                "HeartbeatAck": {"type": "object", "properties": {"interval_ms": {"type": "integer"}}}
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
                "requestBody": body("Heartbeat"), "responses": {"200": ok("HeartbeatAck"), "401": err(), "403": err()}}}
        }
    })
}
