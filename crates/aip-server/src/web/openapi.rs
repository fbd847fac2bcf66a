//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations and the body shapes of `schema.rs` / `responses.rs`, served at
//! `/api/openapi.json`, and the docs page at `/docs` (Swagger UI, its files compiled into
//! the binary: the page loads nothing from another host).
//!
//! Both are public, like `/api/health`: the document holds no secret and describes only
//! what the README already says, and a browser cannot send the key when it opens a page.
//! `--local` still applies. Every route of `web::router` has a path here and every path
//! is a route (`tests/openapi.rs` checks it, and that real answers match their schemas).

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::job_schema::{CreateJobRequest, Job, JobCounts, JobList, JobMember, JobSelector};
use super::schema::{
    Build, Client, ClientList, Dispatched, ErrorBody, Health, Ready, ReadyChecks, Session,
    SessionList, Step,
};
use super::{clients, events, http, jobs, ops, ws};

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/api/openapi.json";
/// Where the docs page is served (`/docs` redirects to `/docs/`; its files are below it).
pub const DOCS_PATH: &str = "/docs";

/// True for the public paths this module serves.
pub fn is_public(path: &str) -> bool {
    path == DOCUMENT_PATH
        || path
            .strip_prefix(DOCS_PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "aip",
        description = "The HTTP API of aip, the Agent Interaction Protocol server \
            (http-api.md): dispatch tasks to connected devices, fetch their results, \
            list clients and sessions, run fleet jobs over many devices, and the \
            operator's health, readiness and metrics endpoints. When the server runs \
            with an API key, every endpoint except `/api/health`, `/api/ready`, this \
            document and `/docs` needs it, as \
            `X-API-Key: <key>` or `Authorization: Bearer <key>`; without a key configured \
            nothing needs one. Every error answer is `{\"detail\": \"<text>\"}`; unknown \
            routes answer 404 `Not Found`, known routes with another method 405 \
            `Method Not Allowed`. Clients must ignore fields they do not know.",
        license(name = "MIT"),
    ),
    paths(
        http::dispatch,
        http::task_result,
        clients::clients,
        http::list_sessions,
        http::get_session,
        http::cancel_session,
        jobs::create_job,
        jobs::list_jobs,
        jobs::get_job,
        jobs::cancel_job,
        events::events,
        ops::health,
        ops::ready,
        ops::metrics,
        ws::upgrade,
    ),
    // The bodies the responses of `responses.rs` name (those are not collected by themselves).
    components(schemas(ErrorBody, Dispatched, Session, SessionList, Client, ClientList, Health,
        Build, Ready, ReadyChecks, Step, Job, JobList, JobMember, JobCounts, JobSelector,
        CreateJobRequest)),
    modifiers(&Security),
    security(("api_key" = []), ("bearer" = [])),
    tags(
        (name = "tasks", description = "Dispatch tasks and read their sessions"),
        (name = "clients", description = "Who is connected"),
        (name = "jobs", description = "Fleet jobs: one request to every device a selector picks, rolled out in batches"),
        (name = "events", description = "Live events as Server-Sent Events: \
            `client_connected` {client_id, client_type, platform, tags, connected_at}, \
            `client_disconnected` {client_id, client_type}, `session_created` {session_id, \
            task_name, request (first 200 bytes), origin, requester, client_id, state, \
            created_at, started_at}, `session_state` {session_id, client_id, state, \
            started_at}, `session_round` {session_id, client_id, round, statuses}, \
            `session_ended` {session_id, task_name, requester, client_id, state, reason, \
            error, finished_at}; each data object also has `type`. Ids increase; send \
            `Last-Event-ID` to resume after one (the last 1024 events are kept, for 60 s \
            after the last subscriber left); when that is not possible the stream starts \
            with `event: resync`: reload the state. Clients must ignore event types and \
            fields they do not know."),
        (name = "operations", description = "Liveness, readiness and metrics"),
        (name = "aip", description = "The AIP WebSocket endpoint (protocol.md)"),
    )
)]
pub struct ApiDoc;

/// The API-key schemes: the same key in either header; `/ws` also takes it as `?token=`.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "The key given to `aip serve --api-key` (or `AIP_API_KEY`)",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The same key as `Authorization: Bearer <key>`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same key as `?token=<key>` (WebSocket clients that cannot set headers)",
            ))),
        );
    }
}

/// The document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /api/openapi.json` and the docs page under `/docs`, from files in the binary.
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    let config = Config::new([DOCUMENT_PATH])
        // The default sends the document to an online validator: no request leaves.
        .validator_url("none")
        .try_it_out_enabled(true)
        .persist_authorization(false);
    SwaggerUi::new(DOCS_PATH)
        .url(DOCUMENT_PATH, document())
        .config(config)
        .into()
}
