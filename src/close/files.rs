//! A request to a `static` route not answered with a file: its status,
//! body text and metric label.

use http::StatusCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRefusal {
    /// Nothing there, or a directory without `index.html` (never a listing).
    NotFound,
    /// `..`, an encoded separator, a backslash or NUL in the path.
    BadPath,
    /// The path resolves (through a symlink) outside the route's directory.
    Outside,
    /// Neither GET nor HEAD.
    Method,
    /// A WebSocket upgrade to a files route: no WebSocket route here.
    Upgrade,
    /// Bigger than a files route serves from memory.
    TooLarge,
    /// The file exists but could not be read (the gateway's side).
    Unreadable,
}

impl FileRefusal {
    pub fn status(self) -> StatusCode {
        match self {
            FileRefusal::NotFound | FileRefusal::Upgrade => StatusCode::NOT_FOUND,
            FileRefusal::BadPath => StatusCode::BAD_REQUEST,
            FileRefusal::Outside | FileRefusal::TooLarge => StatusCode::FORBIDDEN,
            FileRefusal::Method => StatusCode::METHOD_NOT_ALLOWED,
            FileRefusal::Unreadable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Value of `wsgate_static_requests_total{result}`.
    pub fn label(self) -> &'static str {
        match self {
            FileRefusal::NotFound => "not_found",
            FileRefusal::BadPath => "bad_path",
            FileRefusal::Outside => "outside",
            FileRefusal::Method => "method",
            FileRefusal::Upgrade => "upgrade",
            FileRefusal::TooLarge => "too_large",
            FileRefusal::Unreadable => "unreadable",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            FileRefusal::NotFound => "not found",
            FileRefusal::BadPath => "bad path",
            FileRefusal::Outside => "outside the served directory",
            FileRefusal::Method => "only GET and HEAD are served here",
            FileRefusal::Upgrade => "no WebSocket route for this host and path",
            FileRefusal::TooLarge => "file too large to serve",
            FileRefusal::Unreadable => "the file could not be read",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_refusal_table() {
        let table = [
            (FileRefusal::NotFound, 404, "not_found"),
            (FileRefusal::BadPath, 400, "bad_path"),
            (FileRefusal::Outside, 403, "outside"),
            (FileRefusal::Method, 405, "method"),
            (FileRefusal::Upgrade, 404, "upgrade"),
            (FileRefusal::TooLarge, 403, "too_large"),
            (FileRefusal::Unreadable, 500, "unreadable"),
        ];
        for (r, status, label) in table {
            assert_eq!(r.status().as_u16(), status, "{r:?}");
            assert_eq!(r.label(), label);
        }
    }
}
