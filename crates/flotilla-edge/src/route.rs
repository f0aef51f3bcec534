//! The route table: first match on (host, path prefix) wins, as ALB listener rules do.

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_config::{HostPattern, PathPattern};

use crate::group::TargetGroup;

pub(crate) struct Route {
    pub host: HostPattern,
    pub path: PathPattern,
    pub group: Arc<TargetGroup>,
}

pub(crate) struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    pub(crate) fn new(cfg: &[flotilla_config::RouteConfig], groups: &HashMap<String, Arc<TargetGroup>>) -> Self {
        let routes = cfg
            .iter()
            .filter_map(|r| {
                Some(Route { host: r.host.clone(), path: r.path.clone(), group: groups.get(&r.target_group)?.clone() })
            })
            .collect();
        Self { routes }
    }

    pub(crate) fn find(&self, host: &str, path: &str) -> Option<&Arc<TargetGroup>> {
        self.routes.iter().find(|r| r.host.matches(host) && r.path.matches(path)).map(|r| &r.group)
    }
}
