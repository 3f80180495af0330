//! The keys of a `kind = "static"` route: files served over HTTPS, the
//! built-in chat page or an operator's directory.

use std::path::PathBuf;

use serde::Serialize;

use super::reader::Section;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaticRoute {
    /// The directory served below the route's path; absent: the chat page
    /// built into the binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl StaticRoute {
    pub(super) fn read(s: &mut Section<'_>) -> StaticRoute {
        let dir = s.string("dir").map(PathBuf::from);
        if let Some(dir) = &dir
            && !dir.is_dir()
        {
            s.issue("dir", format!("{} is not a directory", dir.display()));
        }
        StaticRoute { dir }
    }
}
