//! Choosing the node for a new participant: a pure function of the nodes' last heartbeats.

use super::NodeStatus;

/// The node a new participant should use: not draining, below its capacity, in the
/// participant's region when one there qualifies (any region otherwise), and of those the least
/// loaded relative to its capacity. Ties go to the node with fewer participants, then the
/// smaller id, so that every node picks the same one from the same snapshot.
pub fn select_node<'a>(nodes: &'a [NodeStatus], region: Option<&str>) -> Option<&'a NodeStatus> {
    let open = || {
        nodes
            .iter()
            .filter(|n| !n.draining && n.participants < n.capacity)
    };
    let in_region = region.filter(|r| open().any(|n| n.region == *r));
    open()
        .filter(|n| in_region.is_none_or(|r| n.region == r))
        .min_by(|a, b| {
            // load a/ca < load b/cb  ⇔  a·cb < b·ca (no floating point).
            let left = u64::from(a.participants) * u64::from(b.capacity);
            let right = u64::from(b.participants) * u64::from(a.capacity);
            left.cmp(&right)
                .then(a.participants.cmp(&b.participants))
                .then_with(|| a.id.cmp(&b.id))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ting_protocol::NodeId;

    fn node(
        id: &str,
        region: &str,
        participants: u32,
        capacity: u32,
        draining: bool,
    ) -> NodeStatus {
        NodeStatus {
            id: NodeId::new(id).unwrap(),
            region: region.into(),
            http_url: format!("https://{id}.example"),
            participants,
            capacity,
            draining,
            relay_addr: None,
            media: true,
            signalling: true,
        }
    }

    fn chosen(nodes: &[NodeStatus], region: Option<&str>) -> Option<String> {
        select_node(nodes, region).map(|n| n.id.to_string())
    }

    #[test]
    fn the_least_loaded_node_relative_to_its_capacity_wins() {
        let nodes = [
            node("a", "eu", 300, 1000, false), // 30 %
            node("b", "eu", 100, 200, false),  // 50 %
            node("c", "eu", 250, 1000, false), // 25 %
        ];
        assert_eq!(chosen(&nodes, None).as_deref(), Some("c"));
    }

    #[test]
    fn draining_and_full_nodes_take_nobody() {
        let nodes = [
            node("a", "eu", 0, 1000, true),
            node("b", "eu", 500, 500, false),
            node("c", "eu", 900, 1000, false),
        ];
        assert_eq!(chosen(&nodes, None).as_deref(), Some("c"));
        let all_closed = [node("a", "eu", 0, 10, true), node("b", "eu", 10, 10, false)];
        assert_eq!(chosen(&all_closed, None), None);
        assert_eq!(chosen(&[], Some("eu")), None);
    }

    #[test]
    fn the_participants_region_comes_first_while_it_has_room() {
        let nodes = [
            node("eu-1", "eu", 800, 1000, false),
            node("us-1", "us", 10, 1000, false),
        ];
        assert_eq!(chosen(&nodes, Some("eu")).as_deref(), Some("eu-1"));
        assert_eq!(chosen(&nodes, Some("us")).as_deref(), Some("us-1"));
        assert_eq!(
            chosen(&nodes, Some("asia")).as_deref(),
            Some("us-1"),
            "no node in the region: the least loaded anywhere"
        );
        let eu_full = [
            node("eu-1", "eu", 1000, 1000, false),
            node("eu-2", "eu", 5, 1000, true),
            node("us-1", "us", 900, 1000, false),
        ];
        assert_eq!(
            chosen(&eu_full, Some("eu")).as_deref(),
            Some("us-1"),
            "a full or draining region sends people elsewhere"
        );
    }

    #[test]
    fn ties_are_broken_the_same_way_on_every_node() {
        let nodes = [
            node("b", "eu", 100, 1000, false),
            node("a", "eu", 100, 1000, false),
            node("c", "eu", 50, 500, false),
        ];
        assert_eq!(
            chosen(&nodes, None).as_deref(),
            Some("c"),
            "equal load: fewer participants"
        );
        let twins = [node("b", "eu", 1, 10, false), node("a", "eu", 1, 10, false)];
        assert_eq!(chosen(&twins, None).as_deref(), Some("a"));
        let reversed = [twins[1].clone(), twins[0].clone()];
        assert_eq!(chosen(&reversed, None).as_deref(), Some("a"));
    }
}
