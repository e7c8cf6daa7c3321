//! What etcd's JSON API (its grpc-gateway, `/v3/...`) answers, parsed: the
//! member list and a member's status. The shell (`agent/src/etcd.rs`) makes
//! the calls; nothing here does I/O.

use serde_json::Value;

use crate::api::EtcdMember;

/// grpc-gateway writes uint64 as a JSON string (older versions: a number).
fn u64_of(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .filter(|s| s.len() <= 256)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A member id as `etcdctl member list` prints it.
pub fn id_hex(id: u64) -> String {
    format!("{id:x}")
}

/// The answer of `POST /v3/cluster/member/list`, sorted by name (a member
/// added and not yet started has no name: it sorts first, named `""`).
/// `healthy` and `leader` are left false: the statuses tell.
pub fn parse_member_list(body: &[u8]) -> Result<Vec<(u64, EtcdMember)>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(format!("etcd: {e}"));
    }
    let members = v
        .get("members")
        .and_then(Value::as_array)
        .ok_or("no `members` in the answer")?;
    let mut out = Vec::new();
    for m in members {
        let id = u64_of(m.get("ID")).ok_or("a member without an `ID`")?;
        let name: String = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .take(64)
            .collect();
        out.push((
            id,
            EtcdMember {
                name,
                id: id_hex(id),
                peer_urls: strings(m.get("peerURLs")),
                client_urls: strings(m.get("clientURLs")),
                learner: m.get("isLearner").and_then(Value::as_bool).unwrap_or(false),
                healthy: false,
                leader: false,
            },
        ));
    }
    out.sort_by(|a, b| a.1.name.cmp(&b.1.name).then(a.0.cmp(&b.0)));
    Ok(out)
}

/// The answer of `POST /v3/maintenance/status`: (the member that answered,
/// the leader it knows; 0 = none).
pub fn parse_status(body: &[u8]) -> Result<(u64, u64), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(format!("etcd: {e}"));
    }
    let me = u64_of(v.get("header").and_then(|h| h.get("member_id")))
        .ok_or("no `header.member_id` in the answer")?;
    Ok((me, u64_of(v.get("leader")).unwrap_or(0)))
}

/// Fill in health and leadership from the statuses that came back:
/// `answers[i]` is member `i`'s own status, if it answered.
pub fn merge(members: Vec<(u64, EtcdMember)>, answers: &[Option<(u64, u64)>]) -> Vec<EtcdMember> {
    members
        .into_iter()
        .enumerate()
        .map(|(i, (id, mut m))| {
            if let Some(Some((me, leader))) = answers.get(i) {
                m.healthy = *me == id;
                m.leader = m.healthy && *leader == id;
            }
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"header":{"cluster_id":"1","member_id":"2","raft_term":"3"},
      "members":[
        {"ID":"12345678901234567890","name":"cp-1","peerURLs":["https://10.0.0.2:2380"],"clientURLs":["https://10.0.0.2:2379"]},
        {"ID":"42","name":"cp-0","peerURLs":["https://10.0.0.1:2380"],"clientURLs":["https://10.0.0.1:2379"]},
        {"ID":7,"peerURLs":["https://10.0.0.3:2380"],"isLearner":true}
      ]}"#;

    #[test]
    fn member_list_parses_ids_names_and_learners() {
        let m = parse_member_list(LIST.as_bytes()).unwrap();
        let names: Vec<&str> = m.iter().map(|(_, m)| m.name.as_str()).collect();
        assert_eq!(names, ["", "cp-0", "cp-1"]);
        assert_eq!(m[0].0, 7);
        assert!(m[0].1.learner && m[0].1.client_urls.is_empty());
        assert_eq!(m[2].0, 12_345_678_901_234_567_890);
        assert_eq!(m[2].1.id, "ab54a98ceb1f0ad2");
        assert_eq!(m[1].1.client_urls, ["https://10.0.0.1:2379"]);
        assert!(!m[1].1.learner && !m[1].1.healthy);
    }

    #[test]
    fn statuses_mark_health_and_the_leader() {
        let m = parse_member_list(LIST.as_bytes()).unwrap();
        let st = parse_status(br#"{"header":{"member_id":"42"},"leader":"42","raftIndex":"9"}"#)
            .unwrap();
        assert_eq!(st, (42, 42));
        // cp-1 answered as someone else (a reused address): not healthy.
        let merged = merge(m, &[None, Some(st), Some((99, 42))]);
        assert!(merged[1].healthy && merged[1].leader);
        assert!(!merged[2].healthy && !merged[2].leader);
        assert!(!merged[0].healthy);
    }

    #[test]
    fn errors_and_junk_are_named() {
        assert!(
            parse_member_list(b"<html>")
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            parse_member_list(br#"{"error":"etcdserver: request timed out","code":14}"#)
                .unwrap_err()
                .contains("request timed out")
        );
        assert!(parse_member_list(b"{}").unwrap_err().contains("members"));
        assert!(parse_status(b"{}").unwrap_err().contains("member_id"));
        // A hostile name is cut to a plain one.
        let m = parse_member_list(br#"{"members":[{"ID":"1","name":"a\u001b[2Jb"}]}"#).unwrap();
        assert_eq!(m[0].1.name, "a2Jb");
    }
}
