//! The registry lists exactly the backends of the enabled features.

#[test]
fn registered_schemes_match_features() {
    let mut expected: Vec<&str> = Vec::new();
    if cfg!(feature = "local") {
        expected.push("file");
    }
    if cfg!(feature = "s3") {
        expected.push("s3");
    }
    if cfg!(feature = "vmdk") {
        expected.push("vmdk");
    }
    if cfg!(feature = "vsphere") {
        expected.push("vsphere");
    }
    if cfg!(feature = "remote") {
        expected.extend(["imagestore+http", "imagestore+https"]);
    }
    expected.sort();
    assert_eq!(imagestore::schemes(), expected);
    assert!(imagestore::registry::check_unique().is_ok());
}

#[tokio::test]
async fn unknown_schemes_list_the_available_ones() {
    match imagestore::open("s4://bucket").await {
        Err(imagestore::Error::UnknownScheme {
            scheme,
            available,
            hint,
        }) => {
            assert_eq!(scheme, "s4");
            assert_eq!(
                available,
                imagestore::schemes()
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
            );
            assert_eq!(hint, None);
        }
        other => panic!("unexpected {other:?}"),
    }
    if !imagestore::schemes().contains(&"s3") {
        match imagestore::open("s3://bucket").await {
            Err(imagestore::Error::UnknownScheme { hint: Some(h), .. }) => {
                assert!(h.contains("`s3`"), "{h}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
