//! Login tokens end with their user: a token of the admin API's own issuer counts
//! only while its user exists, is active, has the token's role and still has the
//! token's version (`tv`; a disable, role or password change bumps it).
//!
//! The check runs on every request with such a token, after the verified-token
//! cache (which keeps a token up to five minutes), against a cached view of the
//! user: one lookup per request, no I/O on a hit. `user` changes drop the view
//! (the change follower), so a revocation reaches the proxy within the feed's
//! delay. Deleting a tenant deletes (and reports) its users, so a tenant deleted
//! and re-created under the same id accepts none of the old tenant's login tokens.

use super::jwt::Identity;
use crate::cache::{Breaker, CacheSettings, Cached, IdKey};
use crate::reject::Reject;
use std::sync::Arc;
use std::time::Instant;
use tenantgate_core::domain::{UserRecord, UserStatus};
use tenantgate_core::store::{Change, ChangeKind, Store};

/// What the proxy keeps of a user: what its tokens are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    pub active: bool,
    pub token_version: i64,
    pub role: Box<str>,
}

impl UserView {
    pub fn from_record(u: &UserRecord) -> Self {
        UserView {
            active: u.status == UserStatus::Active,
            token_version: u.token_version,
            role: u.role.as_str().into(),
        }
    }

    /// Whether a login token with `role` and `tv` (absent: 0, tokens of releases
    /// before token versions) still speaks for this user.
    pub fn accepts(&self, role: &str, tv: Option<i64>) -> bool {
        self.active && self.token_version == tv.unwrap_or(0) && &*self.role == role
    }
}

/// The users of login tokens, cached by (tenant, user id).
pub struct LoginUsers {
    pub cache: Cached<(IdKey, IdKey), UserView>,
}

impl LoginUsers {
    pub fn new(store: Store, settings: CacheSettings, breaker: Arc<Breaker>) -> Self {
        let cache = Cached::new(
            "login_users",
            settings,
            breaker,
            move |(t, u): (IdKey, IdKey)| {
                let s = store.clone();
                Box::pin(async move {
                    let user = s.get_user(&t.to_text(), &u.to_text()).await?;
                    Ok(user.as_ref().map(UserView::from_record))
                })
            },
        );
        LoginUsers { cache }
    }

    /// `Ok` when `id` (a verified login token) still speaks for its user; 401
    /// `invalid_token` when the user is gone, disabled or changed since; 503 when
    /// the store cannot say and nothing is cached.
    pub async fn check(&self, id: &Identity, now: Instant) -> Result<(), Reject> {
        let (user, _) = self
            .cache
            .get_pair(&id.tenant_id, &id.user_id, now)
            .await
            .map_err(|_| Reject::Unavailable)?;
        match user {
            Some(u) if u.accepts(&id.role, id.token_version) => Ok(()),
            _ => Err(Reject::InvalidToken),
        }
    }

    /// Drops a changed user (the change's subject is its id).
    pub async fn apply(&self, c: &Change) {
        if c.kind == ChangeKind::User {
            self.cache
                .invalidate(&(IdKey::new(&c.tenant_id), IdKey::new(&c.subject)))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(active: bool, tv: i64, role: &str) -> UserView {
        UserView {
            active,
            token_version: tv,
            role: role.into(),
        }
    }

    #[test]
    fn a_token_counts_only_for_an_active_user_at_its_version_and_role() {
        assert!(view(true, 0, "admin").accepts("admin", None));
        assert!(view(true, 0, "admin").accepts("admin", Some(0)));
        assert!(view(true, 3, "admin").accepts("admin", Some(3)));
        assert!(!view(true, 3, "admin").accepts("admin", Some(2)));
        assert!(!view(true, 3, "admin").accepts("admin", None));
        assert!(!view(false, 0, "admin").accepts("admin", Some(0)));
        assert!(!view(true, 0, "admin").accepts("developer", Some(0)));
    }

    #[tokio::test]
    async fn changes_and_deletes_reach_the_check() {
        use crate::auth::{AuthMethod, Principal};
        use tenantgate_core::store::{NewTenant, NewUser, UserPatch};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = Store::open(&url, 2).await.unwrap();
        let tenant = store
            .create_tenant(&NewTenant {
                id: "acme".into(),
                name: "Acme".into(),
                tier: tenantgate_core::domain::Tier::Free,
                admin_user: None,
            })
            .await
            .unwrap();
        let user = store
            .create_user(
                &tenant.id,
                &NewUser {
                    id: "u1".into(),
                    email: "a@acme.example".into(),
                    password_hash: "x".into(),
                    role: "admin".into(),
                },
            )
            .await
            .unwrap();
        let users = LoginUsers::new(
            store.clone(),
            CacheSettings::for_tests(60_000, 60_000, 600_000),
            Arc::new(Breaker::new(1, std::time::Duration::from_secs(1))),
        );
        let identity = |tv: Option<i64>| Identity {
            tenant_id: "acme".into(),
            user_id: user.id.clone(),
            role: "admin".into(),
            issuer: "tenantgate".into(),
            exp: i64::MAX,
            token_version: tv,
            principal: Principal::new("acme", &user.id, "admin", AuthMethod::Jwt, None).unwrap(),
        };
        let now = Instant::now;
        users.check(&identity(Some(0)), now()).await.unwrap();
        let patch = UserPatch {
            status: Some(UserStatus::Disabled),
            ..UserPatch::default()
        };
        let changed = store.update_user("acme", &user.id, &patch).await.unwrap();
        assert_eq!(changed.token_version, 1);
        // Cached: the old answer until the change is applied.
        users.check(&identity(Some(0)), now()).await.unwrap();
        let mut bus = store.subscribe();
        store.delete_user("acme", &user.id).await.unwrap();
        let c = bus.recv().await.unwrap();
        users.apply(&c).await;
        assert_eq!(
            users.check(&identity(Some(0)), now()).await,
            Err(Reject::InvalidToken)
        );
        assert_eq!(
            users.check(&identity(Some(1)), now()).await,
            Err(Reject::InvalidToken)
        );
    }
}
