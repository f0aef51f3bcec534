//! Which Docker containers and Swarm services are this Flotilla's. Several Flotillas may share
//! one Docker host or one swarm, each with a group named `web`; everything a driver lists,
//! removes or adopts is therefore selected by the deployment id (`fleet.deployment`) as well
//! as the group, and names carry it so two deployments never collide on a name (a create that
//! collides is cleaned up by name). Plain containers are per node, so in a cluster they also
//! carry the node's name: two nodes of one cluster may share a host. Swarm services belong to
//! the cluster (any node may lead their group), so they carry only the deployment.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    pub deployment: String,
    /// This node's name in a cluster.
    pub node: Option<String>,
}

impl Scope {
    /// The labels that select `group`'s instances of this scope (`swarm`: services, else
    /// containers).
    pub fn labels(&self, group: &str, swarm: bool) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([
            ("flotilla.deployment".to_string(), self.deployment.clone()),
            ("flotilla.group".to_string(), group.to_string()),
        ]);
        if let (false, Some(node)) = (swarm, &self.node) {
            l.insert("flotilla.node".into(), node.clone());
        }
        l
    }

    /// The Engine API `filters` query value listing exactly `labels(group, swarm)`.
    pub fn filters(&self, group: &str, swarm: bool) -> String {
        let labels: Vec<String> = self.labels(group, swarm).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        serde_json::json!({ "label": labels }).to_string()
    }

    /// The container or service name of `instance`.
    pub fn name(&self, instance: &str, swarm: bool) -> String {
        match (swarm, &self.node) {
            (false, Some(node)) => format!("flotilla-{}-{node}-{instance}", self.deployment),
            _ => format!("flotilla-{}-{instance}", self.deployment),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_carry_the_node_in_a_cluster_services_only_the_deployment() {
        let single = Scope { deployment: "d1".into(), node: None };
        let node = Scope { deployment: "d1".into(), node: Some("a".into()) };
        assert_eq!(single.name("web-0001", false), "flotilla-d1-web-0001");
        assert_eq!(node.name("web-0001", false), "flotilla-d1-a-web-0001");
        assert_eq!(node.name("web-0001", true), "flotilla-d1-web-0001");
        assert_eq!(node.labels("web", false)["flotilla.node"], "a");
        assert!(!node.labels("web", true).contains_key("flotilla.node"));
        assert_eq!(single.filters("web", true), r#"{"label":["flotilla.deployment=d1","flotilla.group=web"]}"#);
    }
}
