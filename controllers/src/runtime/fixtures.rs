//! Choreography fixtures, generic over the kind, in the controller-rs shape: a controller's
//! `Context::test()` returns its context over [`mock_client`]'s client together with the
//! [`Verifier`] that plays the API server. A scenario takes the calls in order, asserts each one
//! and answers it (or never answers); [`Scenario::finish`] then fails on any call the scenario did
//! not expect. Every scenario and every reconcile runs under a timeout, so a regression fails
//! instead of hanging.

use std::future::Future;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

/// How long one scenario step, or a reconcile against a scripted server, may take.
pub const STEP: Duration = Duration::from_secs(1);

/// A client whose every call goes to the returned verifier.
pub fn mock_client() -> (Client, Verifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), Verifier { handle })
}

/// The keys of a JSON object, sorted.
pub fn sorted_keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Awaits `future`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(what: &str, limit: Duration, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_elapsed| panic!("{what} did not finish within {limit:?}"))
}

/// One API call the code under test made.
#[derive(Debug)]
pub struct Call {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// The decoded JSON body (`Null` when empty).
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

impl Call {
    /// Answers with `status` and `body`.
    pub fn reply(self, status: u16, body: &Value) {
        self.send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    /// Answers 200 with `body`.
    pub fn ok(self, body: &Value) {
        self.reply(200, body);
    }

    /// Answers with a `Status` failure of `code` and `reason`.
    pub fn fail(self, code: u16, reason: &str) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": reason});
        self.reply(code, &status);
    }

    /// Never answers: the returned sender keeps the call open until it is dropped.
    pub fn hang(self) -> SendResponse<Response<Body>> {
        self.send
    }
}

/// Plays the API server for one test.
pub struct Verifier {
    handle: Handle<Request<Body>, Response<Body>>,
}

impl Verifier {
    /// The next call, within [`STEP`].
    pub async fn next(&mut self) -> Call {
        let (request, send) = within("the next API call", STEP, self.handle.next_request())
            .await
            .expect("the client was dropped before the expected call");
        let method = request.method().clone();
        let uri = request.uri().to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Call {
            method,
            uri,
            body,
            send,
        }
    }

    /// The next call, which must be a forced server-side apply of `K`'s status under
    /// `field_manager` that carries nothing but `apiVersion`, `kind` and `status`.
    pub async fn expect_status_apply<K: Resource<DynamicType = ()>>(
        &mut self,
        namespace: &str,
        name: &str,
        field_manager: &str,
    ) -> Call {
        let call = self.next().await;
        let url = K::url_path(&(), Some(namespace));
        assert_eq!(call.method, Method::PATCH, "{}", call.uri);
        assert_eq!(
            call.uri,
            format!("{url}/{name}/status?&force=true&fieldManager={field_manager}")
        );
        assert_eq!(call.body["apiVersion"], K::api_version(&()).as_ref());
        assert_eq!(call.body["kind"], K::kind(&()).as_ref());
        assert_eq!(
            sorted_keys(&call.body),
            ["apiVersion", "kind", "status"],
            "only status is applied"
        );
        call
    }

    /// The next call, which must create an event in `namespace` with `reason`, reported by
    /// `component`; answered as created.
    pub async fn expect_event(&mut self, namespace: &str, component: &str, reason: &str) -> Value {
        let call = self.next().await;
        assert_eq!(call.method, Method::POST, "{}", call.uri);
        assert!(
            call.uri.starts_with(&format!(
                "/apis/events.k8s.io/v1/namespaces/{namespace}/events"
            )),
            "{}",
            call.uri
        );
        assert_eq!(call.body["reportingController"], component);
        assert_eq!(call.body["reason"], reason, "{}", call.body);
        let event = call.body.clone();
        call.reply(201, &event);
        event
    }

    /// Runs `scenario` on its own task.
    pub fn run<F, Fut>(self, scenario: F) -> Scenario
    where
        F: FnOnce(Verifier) -> Fut,
        Fut: Future<Output = Verifier> + Send + 'static,
    {
        Scenario(tokio::spawn(scenario(self)))
    }

    /// Fails if any call is pending or arrives within a short while.
    pub async fn assert_no_more_calls(mut self) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_millis(50), self.handle.next_request()).await
        {
            panic!(
                "an unexpected extra call: {} {}",
                request.method(),
                request.uri()
            );
        }
    }
}

/// A scenario running against the code under test.
pub struct Scenario(tokio::task::JoinHandle<Verifier>);

impl Scenario {
    /// Waits for the scenario (within [`STEP`] once the code under test is done), then fails on
    /// any call it did not script.
    pub async fn finish(self) {
        let verifier = within("the scenario", STEP, self.0)
            .await
            .expect("the scenario failed");
        verifier.assert_no_more_calls().await;
    }
}
