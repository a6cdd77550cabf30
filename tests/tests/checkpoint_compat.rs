//! A checkpoint written by an earlier netclaim still opens: the file
//! `fixtures/checkpoint-redb-3.1.3.redb` was written by netclaim's store on redb 3.1.3
//! (before the move to redb 4, whose file format is the same v3) and holds seven claims,
//! with attachments, host originals and a DHCP lease, after a rewrite and a removal.
//! `fixtures/checkpoint-redb-3.1.3.json` is what that store listed.

use netclaim::state::{ClaimPlans, StateStore, CHECKPOINT_FILE};

#[test]
fn a_checkpoint_from_redb_3_opens_with_every_claim() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let expected: Vec<ClaimPlans> = serde_json::from_slice(
        &std::fs::read(fixtures.join("checkpoint-redb-3.1.3.json")).expect("read the listing"),
    )
    .expect("the listing parses");
    assert_eq!(expected.len(), 7);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        fixtures.join("checkpoint-redb-3.1.3.redb"),
        dir.path().join(CHECKPOINT_FILE),
    )
    .expect("copy the fixture");

    let store = StateStore::open(dir.path()).expect("open");
    assert!(
        store.moved_aside().is_none(),
        "the file was taken as corrupt"
    );
    assert_eq!(store.list().expect("list"), expected);
    // The pod index is rebuilt at open from the claims.
    let pod = &expected[0].plans[0].pod.uid;
    let of_pod = store.plans_of_pod(pod).expect("plans_of_pod");
    assert!(!of_pod.is_empty() && of_pod.iter().all(|(_, p)| &p.pod.uid == pod));
    // And the store writes on in the old file.
    let mut more = expected[1].clone();
    more.claim.uid = "after-the-upgrade".into();
    for plan in &mut more.plans {
        plan.claim.uid = more.claim.uid.clone();
    }
    store.put(&more).expect("put");
    drop(store);
    let store = StateStore::open(dir.path()).expect("reopen");
    assert_eq!(store.list().expect("list").len(), 8);
}
