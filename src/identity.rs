//! Who is behind a request: the user and team of the access key it carried
//! (anonymous when keys are not in use), for policies, events and costs.

use std::sync::Arc;

/// The caller of one request. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The access key's user; `None` for anonymous traffic.
    pub user: Option<Arc<str>>,
    /// The access key's team, if it has one.
    pub team: Option<Arc<str>>,
    /// May read the admin routes (`/_kt/events`, `/_kt/`).
    pub admin: bool,
}

impl Identity {
    /// Nobody in particular: no key was presented (or none is needed).
    pub fn anonymous() -> Self {
        Identity::default()
    }

    /// A named user, optionally in a team.
    pub fn user(user: &str, team: Option<&str>) -> Self {
        Identity {
            user: Some(Arc::from(user)),
            team: team.map(Arc::from),
            admin: false,
        }
    }
}
