//! RFC 9457 problem details: the one place HTTP errors are shaped.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Self {
            problem_type: format!("https://custodian.dev/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// An extractor's refusal (query, form, JSON body), keeping its status: 415 for a
    /// missing or wrong Content-Type, 422 for a body that does not fit, 400 otherwise.
    pub fn rejected(status: StatusCode, detail: impl Into<String>) -> Self {
        match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Self::new(status, "unsupported-media-type", "Unsupported media type").detail(detail)
            }
            StatusCode::UNPROCESSABLE_ENTITY => {
                Self::new(status, "unprocessable-entity", "The request does not fit the schema").detail(detail)
            }
            _ => Self::bad_request(detail),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", "The request is invalid").detail(detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required").detail(detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed for this caller").detail(detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "No such resource").detail(detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Something went wrong on our side").detail(detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "A dependency is unavailable; retry later")
            .detail(detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, serde_json::to_string(&self).unwrap_or_default()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Errors that axum itself answers (405 method not allowed, 413 body too large, an extractor's
/// 400/415/422) come as plain text; this turns each into problem+json with the same status,
/// its text as the detail. JSON answers (the OP's signal endpoints speak their RFCs' error
/// formats) and pages are left as they are.
pub async fn bare_errors_as_problems(response: Response) -> Response {
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let structured = content_type.starts_with(PROBLEM_JSON)
        || content_type.starts_with("application/json")
        || content_type.starts_with("text/html");
    if !(status.is_client_error() || status.is_server_error()) || structured {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let text = axum::body::to_bytes(response.into_body(), 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_owned();
    let mut problem = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => {
            Problem::rejected(status, detail.clone())
        }
        _ => {
            let title = status.canonical_reason().unwrap_or("Error");
            Problem::new(status, &title.to_ascii_lowercase().replace(' ', "-"), title)
        }
    };
    if detail.is_empty() {
        problem.detail = None;
    } else if problem.detail.is_none() {
        problem = problem.detail(detail);
    }
    let mut response = problem.into_response();
    if let Some(allow) = allow {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    if let Some(retry_after) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, retry_after);
    }
    response
}

/// A JSON request body that must be an object (serde would also take a struct from an array
/// of its fields), decoded into `T`; each refusal keeps the status its cause has.
pub fn json_object<T: serde::de::DeserializeOwned>(
    body: Result<axum::Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<T, Problem> {
    let axum::Json(value) = body.map_err(|e| Problem::rejected(e.status(), e.body_text()))?;
    if !value.is_object() {
        return Err(Problem::rejected(StatusCode::UNPROCESSABLE_ENTITY, "the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| Problem::rejected(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}
