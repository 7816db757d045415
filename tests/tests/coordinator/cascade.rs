//! Rooms that span regions: siblings, origins and closing.

use super::*;

/// Two coordinators and the fake nodes `eu-1`, `eu-2` (eu) and `us-1` (us), everyone seeing
/// everyone; and the room directory.
async fn cascade_cluster(
    nats: &NatsServer,
) -> anyhow::Result<(Vec<FakeNode>, [CoordinatorHandle; 2], RoomDirectory)> {
    let nodes = fake_nodes(nats, &[("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")]).await;
    let coords = [start_coordinator(nats, "c1"), start_coordinator(nats, "c2")];
    wait_cluster(&[&coords[0], &coords[1]], nodes.len()).await?;
    let dir = RoomDirectory::open(nodes[0].client(), 1).await?;
    Ok((nodes, coords, dir))
}

fn fake<'a>(nodes: &'a [FakeNode], id: &NodeId) -> &'a FakeNode {
    nodes.iter().find(|n| n.id() == id).expect("a cluster node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_regions_and_each_client_is_served_in_its_own() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let (nodes, coords, dir) = cascade_cluster(&nats).await?;
    let room = room_name("span");

    let (first, eu) = nodes[0].join(&room, "eu", &[]).await?;
    let origin = fake(&nodes, &eu);
    assert_eq!(origin.state().region, "eu");
    assert_eq!((&first.node, first.epoch), (&eu, 1));
    assert_eq!(first.nodes, vec![room_node(origin)]);

    let (second, us) = nodes[2].join(&room, "us", &[]).await?;
    assert_eq!(us.as_str(), "us-1", "a us client is served in us");
    assert_eq!((&second.node, second.epoch), (&eu, 1), "origin, epoch stay");
    assert_eq!(second.nodes, vec![room_node(origin), room_node(&nodes[2])]);
    let now = entry(&dir, &room).await.map_err(anyhow::Error::msg)?;
    assert_eq!(now.as_ref(), Some(&second));

    // More clients of either region: the room's node there serves them, nothing is written.
    for (region, serve) in [("eu", &eu), ("us", &us), ("eu", &eu)] {
        let (a, s) = nodes[1].join(&room, region, &[]).await?;
        assert_eq!((&a, &s), (&second, serve), "{region}");
    }
    assert_eq!(checked_history(&dir, &room).await?, vec![first, second]);
    wait_until(WAIT, "the extension counted once", || async {
        match counted(&coords, "coord_allocations_total{result=\"extended\"}").await? {
            1 => Ok(()),
            n => Err(format!("{n} extensions")),
        }
    })
    .await?;

    // GET /rooms: the origin, the epoch, and each node with what it reports.
    let report = |members, link: &NodeId| {
        vec![RoomMembers {
            room: RoomId::new(&room).unwrap(),
            members,
            links: vec![link.clone()],
        }]
    };
    fake(&nodes, &eu).set_rooms(report(2, &us));
    fake(&nodes, &us).set_rooms(report(1, &eu));
    let listed = admin_json(coords[0].http_addr(), "/rooms").await?;
    let row = listed
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["room"] == room.as_str()))
        .expect("the room listed");
    assert_eq!(
        (&row["node"], &row["epoch"]),
        (&eu.as_str().into(), &1.into())
    );
    assert_eq!(row["members"], 3, "members over the room's nodes: {row}");
    assert_eq!(row["node_answered"], true);
    let expect = [(&eu, "eu", true, 2, &us), (&us, "us", false, 1, &eu)];
    let listed_nodes = row["nodes"].as_array().expect("nodes listed");
    assert_eq!(listed_nodes.len(), expect.len(), "{row}");
    for (n, (id, region, origin, members, link)) in listed_nodes.iter().zip(expect) {
        let want = serde_json::json!({
            "node": id, "region": region, "origin": origin, "liveness": "alive",
            "members": members, "answered": true, "links": [link],
        });
        assert_eq!(n, &want, "{row}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_node_gets_a_sibling_in_its_region() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let (nodes, _coords, dir) = cascade_cluster(&nats).await?;
    let room = room_name("full");

    let (first, eu) = nodes[0].join(&room, "eu", &[]).await?;
    let (grown, sibling) = nodes[0].join(&room, "eu", &[&eu]).await?;
    assert_ne!(sibling, eu, "the full node does not serve again");
    assert_eq!(fake(&nodes, &sibling).state().region, "eu");
    assert_eq!((&grown.node, grown.epoch), (&eu, 1));
    let pair = [fake(&nodes, &eu), fake(&nodes, &sibling)].map(room_node);
    assert_eq!(grown.nodes, pair);
    // Both eu nodes full, and no other eu node: the least-loaded node anywhere joins.
    let (widest, serve) = nodes[0].join(&room, "eu", &[&eu, &sibling]).await?;
    assert_eq!((serve.as_str(), widest.nodes.len()), ("us-1", 3));
    // Without `full`, an eu client is back on a node of its region.
    let (_, again) = nodes[0].join(&room, "eu", &[]).await?;
    assert!(again == eu || again == sibling, "{again}");
    let history = checked_history(&dir, &room).await?;
    assert_eq!(history, vec![first, grown, widest]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_leaving_shrink_the_room_move_its_origin_and_close_it_last() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let (nodes, coords, dir) = cascade_cluster(&nats).await?;
    let room = room_name("leave");
    let room_id = RoomId::new(&room)?;

    // The eu origin, then us, then the origin's eu sibling.
    let (_, origin) = nodes[0].join(&room, "eu", &[]).await?;
    nodes[2].join(&room, "us", &[]).await?;
    let (full, sibling) = nodes[0].join(&room, "eu", &[&origin]).await?;
    let us = nodes[2].id().clone();
    let all = vec![origin.clone(), us.clone(), sibling.clone()];
    assert_eq!(full.members(), all);

    // A node that is not in the room, and a message from a later epoch, change nothing.
    let stranger = RoomClosed {
        v: VERSION,
        room: room_id.clone(),
        node: NodeId::new("gone")?,
        epoch: 1,
        draining: false,
    };
    let client = nodes[1].client();
    client
        .publish(ROOM_CLOSED, serde_json::to_vec(&stranger)?.into())
        .await?;
    fake(&nodes, &us).leave_room(&room_id, 7).await?;

    // A node that is not the origin leaves: the entry loses it, origin and epoch stay.
    fake(&nodes, &us).leave_room(&room_id, 1).await?;
    let rest = vec![origin.clone(), sibling.clone()];
    wait_entry(&dir, &room, Some((&origin, 1, rest))).await?;

    // The origin leaves: the next node becomes the origin with the next epoch.
    fake(&nodes, &origin).leave_room(&room_id, 1).await?;
    let last = vec![sibling.clone()];
    wait_entry(&dir, &room, Some((&sibling, 2, last))).await?;
    let puts = checked_history(&dir, &room).await?;
    let origins: Vec<(&str, u64)> = puts.iter().map(|a| (a.node.as_str(), a.epoch)).collect();
    let o = origin.as_str();
    let want = [(o, 1), (o, 1), (o, 1), (o, 1), (sibling.as_str(), 2)];
    assert_eq!(origins, want, "{puts:?}");

    // The last node leaves (it learnt epoch 1 when it joined): the entry is deleted.
    fake(&nodes, &sibling).leave_room(&room_id, 1).await?;
    wait_entry(&dir, &room, None).await?;
    let history = dir.history(&room_id).await?;
    assert!(history.last().is_some_and(|e| e.assignment.is_none()));

    // One coordinator took each message; between them they counted every outcome.
    let want = [
        ("unchanged", 2),
        ("removed", 1),
        ("origin_moved", 1),
        ("closed", 1),
    ];
    wait_until(WAIT, "every leave counted", || async {
        for (outcome, n) in want {
            let series = format!("coord_room_leaves_total{{outcome=\"{outcome}\"}}");
            match counted(&coords, &series).await? {
                got if got == n => {}
                got => return Err(format!("{outcome}: {got}, want {n}")),
            }
        }
        Ok(())
    })
    .await?;
    Ok(())
}
