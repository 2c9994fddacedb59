//! The table of routes, as data: each path's template (the metrics label,
//! never an id), the methods it answers, what each needs of its caller
//! ([`Need`]), and the endpoint that serves it. `dispatch` finds the
//! route, asks who is calling, and calls the handler; nothing else.
//!
//! Paths are served with and without a trailing slash; a known path with
//! another method is 405 (with `Allow`), anything else 404.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request};

use crate::auth::Need;
use crate::error::ApiError;
use crate::handlers::playground::File;
use crate::handlers::{self, HandlerResult};
use crate::App;

/// What serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    ChatCompletions,
    Responses,
    ResponseGet,
    ResponseDelete,
    ResponseInputItems,
    Conversations,
    ConversationGet,
    ConversationUpdate,
    ConversationDelete,
    ConversationItems,
    ConversationAddItems,
    ConversationItemGet,
    ConversationItemDelete,
    Models,
    Model,
    InitializeSession,
    SessionGet,
    SessionDelete,
    SessionMessages,
    Sessions,
    Feedback,
    AdminFeedback,
    AdminFeedbackExport,
    AdminUpstreams,
    Metrics,
    Healthz,
    Readyz,
    OpenApi,
    Docs,
    Playground,
    PlaygroundFile,
}

/// A method as routes name it; `Get` answers `HEAD` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
    Delete,
}

/// One segment of a route's path.
#[derive(Debug, Clone, Copy)]
enum Seg {
    /// This word exactly.
    Lit(&'static str),
    /// Any one non-empty segment (an id, a file name).
    Param,
    /// The rest of the path, slashes and all (a model id such as
    /// `meta-llama/Llama-3-8B-Instruct`).
    Rest,
}

use Endpoint::*;
use Seg::{Lit, Param, Rest};
use Verb::{Delete, Get, Post};

/// One route: its template, its path, and per method what it needs of the
/// caller and what serves it; for a route whose paths exist only in some
/// cases (a file that is there, the playground when it is on), the test
/// that says so: a path that does not exist is 404 whatever the method.
#[derive(Debug)]
struct Route {
    template: &'static str,
    path: &'static [Seg],
    allow: &'static str,
    methods: &'static [(Verb, Need, Endpoint)],
    exists: Option<fn(&App, &str) -> bool>,
}

const fn route(
    template: &'static str,
    path: &'static [Seg],
    allow: &'static str,
    methods: &'static [(Verb, Need, Endpoint)],
) -> Route {
    Route {
        template,
        path,
        allow,
        methods,
        exists: None,
    }
}

impl Route {
    const fn only_if(mut self, exists: fn(&App, &str) -> bool) -> Route {
        self.exists = Some(exists);
        self
    }
}

fn docs_file(_: &App, file: &str) -> bool {
    handlers::docs::exists(file)
}

fn playground_on(app: &App, _: &str) -> bool {
    app.playground
}

fn playground_file(app: &App, name: &str) -> bool {
    app.playground && File::named(name).is_some()
}

/// Every route, matched in order.
static ROUTES: &[Route] = &[
    route(
        "/chat/",
        &[Lit("chat")],
        "POST",
        &[(Post, Need::Session, Chat)],
    ),
    route(
        "/v1/chat/completions",
        &[Lit("v1"), Lit("chat"), Lit("completions")],
        "POST",
        &[(Post, Need::SessionIfNamed, ChatCompletions)],
    ),
    route(
        "/v1/responses",
        &[Lit("v1"), Lit("responses")],
        "POST",
        &[(Post, Need::Principal, Responses)],
    ),
    route(
        "/v1/responses/{response_id}",
        &[Lit("v1"), Lit("responses"), Param],
        "GET, DELETE",
        &[
            (Get, Need::Principal, ResponseGet),
            (Delete, Need::Principal, ResponseDelete),
        ],
    ),
    route(
        "/v1/responses/{response_id}/input_items",
        &[Lit("v1"), Lit("responses"), Param, Lit("input_items")],
        "GET",
        &[(Get, Need::Principal, ResponseInputItems)],
    ),
    route(
        "/v1/conversations",
        &[Lit("v1"), Lit("conversations")],
        "POST",
        &[(Post, Need::Principal, Conversations)],
    ),
    route(
        "/v1/conversations/{conversation_id}",
        &[Lit("v1"), Lit("conversations"), Param],
        "GET, POST, DELETE",
        &[
            (Get, Need::Principal, ConversationGet),
            (Post, Need::Principal, ConversationUpdate),
            (Delete, Need::Principal, ConversationDelete),
        ],
    ),
    route(
        "/v1/conversations/{conversation_id}/items",
        &[Lit("v1"), Lit("conversations"), Param, Lit("items")],
        "GET, POST",
        &[
            (Get, Need::Principal, ConversationItems),
            (Post, Need::Principal, ConversationAddItems),
        ],
    ),
    route(
        "/v1/conversations/{conversation_id}/items/{item_id}",
        &[Lit("v1"), Lit("conversations"), Param, Lit("items"), Param],
        "GET, DELETE",
        &[
            (Get, Need::Principal, ConversationItemGet),
            (Delete, Need::Principal, ConversationItemDelete),
        ],
    ),
    route(
        "/v1/models",
        &[Lit("v1"), Lit("models")],
        "GET",
        &[(Get, Need::Models, Models)],
    ),
    route(
        "/v1/models/{model}",
        &[Lit("v1"), Lit("models"), Rest],
        "GET",
        &[(Get, Need::Models, Model)],
    ),
    route(
        "/session/initialize_session",
        &[Lit("session"), Lit("initialize_session")],
        "POST",
        &[(Post, Need::Create, InitializeSession)],
    ),
    route(
        "/session/{session_id}",
        &[Lit("session"), Param],
        "GET, DELETE",
        &[
            (Get, Need::Session, SessionGet),
            (Delete, Need::Session, SessionDelete),
        ],
    ),
    route(
        "/session/{session_id}/messages",
        &[Lit("session"), Param, Lit("messages")],
        "GET",
        &[(Get, Need::Session, SessionMessages)],
    ),
    route(
        "/sessions",
        &[Lit("sessions")],
        "GET",
        &[(Get, Need::Known, Sessions)],
    ),
    route(
        "/feedback/",
        &[Lit("feedback")],
        "POST",
        &[(Post, Need::Session, Feedback)],
    ),
    route(
        "/admin/feedback",
        &[Lit("admin"), Lit("feedback")],
        "GET",
        &[(Get, Need::Admin, AdminFeedback)],
    ),
    route(
        "/admin/feedback/export",
        &[Lit("admin"), Lit("feedback"), Lit("export")],
        "GET",
        &[(Get, Need::Admin, AdminFeedbackExport)],
    ),
    route(
        "/admin/upstreams",
        &[Lit("admin"), Lit("upstreams")],
        "GET",
        &[(Get, Need::Admin, AdminUpstreams)],
    ),
    route(
        "/metrics",
        &[Lit("metrics")],
        "GET",
        &[(Get, Need::Metrics, Metrics)],
    ),
    route(
        "/healthz",
        &[Lit("healthz")],
        "GET",
        &[(Get, Need::Open, Healthz)],
    ),
    route(
        "/readyz",
        &[Lit("readyz")],
        "GET",
        &[(Get, Need::Open, Readyz)],
    ),
    route(
        "/openapi.json",
        &[Lit("openapi.json")],
        "GET",
        &[(Get, Need::Open, OpenApi)],
    ),
    route("/docs", &[Lit("docs")], "GET", &[(Get, Need::Open, Docs)]),
    route(
        "/docs/{file}",
        &[Lit("docs"), Param],
        "GET",
        &[(Get, Need::Open, Docs)],
    )
    .only_if(docs_file),
    route("/", &[], "GET", &[(Get, Need::Open, Playground)]).only_if(playground_on),
    route(
        "/playground/{file}",
        &[Lit("playground"), Param],
        "GET",
        &[(Get, Need::Open, PlaygroundFile)],
    )
    .only_if(playground_file),
];

/// A path matched to its route, with its parameter (an id, a file name,
/// a model) and, for a route with two, the second (an item's id).
pub(crate) struct Matched<'p> {
    route: &'static Route,
    param: &'p str,
    second: &'p str,
}

impl Matched<'_> {
    /// The route's template (the metrics' `route` label).
    pub(crate) fn template(&self) -> &'static str {
        self.route.template
    }
}

/// The route `path` matches, or `None` for a path that is none of ours
/// (404, CORS preflights included).
pub(crate) fn find(path: &str) -> Option<Matched<'_>> {
    let body = path.strip_prefix('/').unwrap_or(path);
    let trimmed = body.strip_suffix('/').unwrap_or(body);
    'routes: for route in ROUTES {
        let mut parts = (!trimmed.is_empty())
            .then(|| trimmed.split('/'))
            .into_iter()
            .flatten();
        let (mut param, mut second) = ("", "");
        // Bytes of `body` the literal and parameter segments took.
        let mut taken = 0;
        for seg in route.path {
            let head = match seg {
                Rest => {
                    // A trailing slash is no part of the id, as it is no
                    // part of any other route's path.
                    let rest = trimmed.get(taken..).unwrap_or("");
                    if rest.is_empty() {
                        continue 'routes;
                    }
                    return Some(Matched {
                        route,
                        param: rest,
                        second,
                    });
                }
                Lit(_) | Param => match parts.next() {
                    Some(head) => head,
                    None => continue 'routes,
                },
            };
            match seg {
                Lit(word) if head == *word => {}
                Param if !head.is_empty() && param.is_empty() => param = head,
                Param if !head.is_empty() => second = head,
                _ => continue 'routes,
            }
            taken += head.len() + 1;
        }
        if parts.next().is_none() {
            return Some(Matched {
                route,
                param,
                second,
            });
        }
    }
    None
}

/// The method as a metrics label (anything unusual is `other`).
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Whether errors on `path` take OpenAI's shape.
pub fn is_openai_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Routes a request to the route its path matched (found once, by the
/// caller, which labels its metrics with it): checks its method, asks
/// who is calling as the route needs, and calls the handler.
pub(crate) async fn dispatch(
    app: &Arc<App>,
    req: Request<Incoming>,
    matched: Option<Matched<'_>>,
    rid: &str,
    peer: IpAddr,
) -> HandlerResult {
    let Some(matched) = matched else {
        return Err(ApiError::not_found());
    };
    if let Some(exists) = matched.route.exists {
        if !exists(app, matched.param) {
            return Err(ApiError::not_found());
        }
    }
    let verb = match *req.method() {
        Method::GET | Method::HEAD => Some(Get),
        Method::POST => Some(Post),
        Method::DELETE => Some(Delete),
        _ => None,
    };
    let Some(&(_, need, endpoint)) = matched
        .route
        .methods
        .iter()
        .find(|(v, _, _)| Some(*v) == verb)
    else {
        return Err(ApiError::method_not_allowed(matched.route.allow));
    };
    let param = matched.param.to_owned();
    let second = matched.second.to_owned();
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    let caller = app.auth.caller(&app.core, req.headers(), need).await?;
    match endpoint {
        Chat => handlers::chat::chat(app, req, rid, caller, peer).await,
        ChatCompletions => handlers::openai::completions(app, req, rid, caller, peer).await,
        Responses => handlers::responses::create(app, req, rid, caller, peer).await,
        ResponseGet => handlers::responses::get(app, caller, &param).await,
        ResponseDelete => handlers::responses::delete(app, caller, &param).await,
        ResponseInputItems => handlers::responses::input_items(app, caller, &param, query).await,
        Conversations => handlers::conversations::create(app, req, caller, peer).await,
        ConversationGet => handlers::conversations::get(app, caller, &param).await,
        ConversationUpdate => handlers::conversations::update(app, req, caller, &param).await,
        ConversationDelete => handlers::conversations::delete(app, caller, &param).await,
        ConversationItems => handlers::conversations::list_items(app, caller, &param, query).await,
        ConversationAddItems => {
            handlers::conversations::add_items(app, req, caller, peer, &param).await
        }
        ConversationItemGet => {
            handlers::conversations::get_item(app, caller, &param, &second).await
        }
        ConversationItemDelete => {
            handlers::conversations::delete_item(app, caller, &param, &second).await
        }
        Models => Ok(handlers::openai::models(app)),
        Model => {
            let id = percent_encoding::percent_decode_str(&param).decode_utf8_lossy();
            handlers::openai::model(app, &id)
        }
        InitializeSession => handlers::session::initialize(app, req, caller, peer).await,
        SessionGet => handlers::session::get(app, caller, &param).await,
        SessionDelete => handlers::session::delete(app, caller, &param).await,
        SessionMessages => handlers::session::messages(app, caller, &param, query).await,
        Sessions => handlers::session::list(app, caller, query).await,
        Feedback => handlers::feedback::submit(app, req, caller, peer).await,
        AdminFeedback => handlers::admin::feedback(app, caller, query).await,
        AdminFeedbackExport => handlers::admin::export(app, caller, query),
        AdminUpstreams => Ok(handlers::upstreams::list(app)),
        Metrics => Ok(handlers::meta::metrics(app)),
        Healthz => Ok(handlers::meta::healthz()),
        Readyz => handlers::meta::readyz(app).await,
        OpenApi => Ok(handlers::meta::openapi()),
        Docs => handlers::docs::docs(&param),
        Playground => Ok(handlers::playground::serve(File::Page)),
        PlaygroundFile => match File::named(&param) {
            Some(file) => Ok(handlers::playground::serve(file)),
            None => Err(ApiError::not_found()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_never_hold_an_id() {
        let id = "3f2a0c1e-0000-4000-8000-000000000000";
        for (path, template) in [
            ("/chat/", Some("/chat/")),
            ("/chat", Some("/chat/")),
            ("/", Some("/")),
            (&*format!("/session/{id}"), Some("/session/{session_id}")),
            (&*format!("/session/{id}/"), Some("/session/{session_id}")),
            (
                &*format!("/session/{id}/messages"),
                Some("/session/{session_id}/messages"),
            ),
            (
                "/session/initialize_session",
                Some("/session/initialize_session"),
            ),
            (
                "/v1/models/meta-llama/Llama-3-8B",
                Some("/v1/models/{model}"),
            ),
            ("/v1/models", Some("/v1/models")),
            ("/v1/chat/completions", Some("/v1/chat/completions")),
            ("/v1/responses", Some("/v1/responses")),
            ("/v1/responses/resp_1", Some("/v1/responses/{response_id}")),
            (
                "/v1/responses/resp_1/input_items",
                Some("/v1/responses/{response_id}/input_items"),
            ),
            (
                "/v1/conversations/conv_1/items/msg_2",
                Some("/v1/conversations/{conversation_id}/items/{item_id}"),
            ),
            ("/v1/conversations/conv_1/items/msg_2/x", None),
            ("/docs", Some("/docs")),
            ("/docs/swagger-ui.css", Some("/docs/{file}")),
            ("/playground/playground.js", Some("/playground/{file}")),
            ("/admin/feedback/export", Some("/admin/feedback/export")),
            ("/session", None),
            ("/session//messages", None),
            ("/chat/extra", None),
            ("/v1/models/", Some("/v1/models")),
            ("/nope", None),
            (&*format!("/session/{id}/messages/more"), None),
        ] {
            assert_eq!(find(path).map(|m| m.template()), template, "{path}");
        }
    }

    #[test]
    fn the_model_id_is_the_whole_rest_of_the_path() {
        let m = find("/v1/models/meta-llama/Llama-3-8B-Instruct").unwrap();
        assert_eq!(m.param, "meta-llama/Llama-3-8B-Instruct");
        let m = find("/v1/models/gpt-4o/").unwrap();
        assert_eq!(m.param, "gpt-4o");
        let m = find("/session/abc/messages").unwrap();
        assert_eq!(m.param, "abc");
        let m = find("/v1/conversations/conv_1/items/msg_2").unwrap();
        assert_eq!((m.param, m.second), ("conv_1", "msg_2"));
    }
}
