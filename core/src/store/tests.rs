use super::*;

#[test]
fn sqlite_urls() {
    assert_eq!(
        sqlite_target("sqlite://data/x.db"),
        (
            Some("data/x.db".into()),
            "sqlite://data/x.db?mode=rwc".into()
        )
    );
    assert_eq!(
        sqlite_target("sqlite:data/x.db?cache=shared"),
        (
            Some("data/x.db".into()),
            "sqlite://data/x.db?cache=shared&mode=rwc".into()
        )
    );
    assert_eq!(sqlite_target("sqlite::memory:").0, None);
}
