//! Errors as clients see them: a status and a JSON body in one place.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a client as
/// `{"errors":[{"status":404,"code":"NOT_FOUND","message":"…"}]}`.
#[derive(Debug)]
pub struct AppError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// What happened, for people.
    pub message: String,
    /// The methods to list in `Allow` (405 only).
    pub allow: Option<&'static str>,
    /// How an artifact request came to this error, when that says more
    /// than the status (a remembered upstream 404).
    pub outcome: Option<crate::artifacts::Outcome>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl AppError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AppError {
        AppError {
            status,
            code,
            message: message.into(),
            allow: None,
            outcome: None,
            retry_after: None,
        }
    }

    /// The same error, marked with how the request came to it.
    pub fn with_outcome(self, outcome: crate::artifacts::Outcome) -> AppError {
        AppError {
            outcome: Some(outcome),
            ..self
        }
    }

    /// The same error again (errors shared by requests that waited on one
    /// piece of work).
    pub fn duplicate(&self) -> AppError {
        AppError {
            message: self.message.clone(),
            ..*self
        }
    }

    /// 503: storage (metadata, blobs, cache) failed; the detail is logged.
    /// The client may retry shortly: the server recovers by itself once the
    /// store answers again.
    pub fn storage(error: impl std::fmt::Display) -> AppError {
        tracing::error!(error = %error, "storage failed");
        AppError {
            retry_after: Some(5),
            ..AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "STORAGE_UNAVAILABLE",
                "storage is unavailable right now; retry shortly (the server log has the cause)",
            )
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    /// 405, listing the methods that are allowed.
    pub fn method_not_allowed(allow: &'static str, message: impl Into<String>) -> AppError {
        AppError {
            allow: Some(allow),
            ..AppError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                message,
            )
        }
    }

    /// 502: an upstream or a plugin failed.
    pub fn bad_gateway(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::BAD_GATEWAY, "BAD_GATEWAY", message)
    }

    /// 500: a failure of the server itself; the detail is logged, not sent.
    pub fn internal(error: impl std::fmt::Display) -> AppError {
        tracing::error!(error = %error, "internal error");
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; see the server log",
        )
    }
}

/// What fails with an `anyhow::Error` on the request path is storage.
impl From<anyhow::Error> for AppError {
    fn from(error: anyhow::Error) -> AppError {
        AppError::storage(format!("{error:#}"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = json!({
            "errors": [{
                "status": self.status.as_u16(),
                "code": self.code,
                "message": self.message,
            }]
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(axum::http::header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(outcome) = self.outcome {
            outcome.mark(&mut response);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_are_503_with_retry_after() {
        let response = AppError::from(anyhow::anyhow!("database is locked")).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "5");
    }
}
