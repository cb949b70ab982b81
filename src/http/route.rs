//! The route table: every path the service answers, matched once per
//! request into a [`Route`], which gives both the metric label and what
//! `router::dispatch` matches on (with the method). The path is split into
//! [`Segments`] without allocating.

/// No route has more segments than this; a longer path is not found.
const MAX_SEGMENTS: usize = 6;

/// The segments of a path between its slashes, without allocating (this
/// runs on every request). A path of more than [`MAX_SEGMENTS`] comes out as
/// `MAX_SEGMENTS` segments of "\0" (a byte no URI carries), which no route and
/// no prefix pattern like `["v1", ..]` matches: such a path is not found.
pub(super) struct Segments<'a> {
    segs: [&'a str; MAX_SEGMENTS],
    n: usize,
}

impl<'a> Segments<'a> {
    #[inline]
    pub(super) fn of(path: &'a str) -> Segments<'a> {
        let mut segs = [""; MAX_SEGMENTS];
        let mut n = 0;
        for seg in path.trim_matches('/').split('/') {
            if n == MAX_SEGMENTS {
                segs = ["\0"; MAX_SEGMENTS];
                break;
            }
            segs[n] = seg;
            n += 1;
        }
        Segments { segs, n }
    }

    #[inline]
    pub(super) fn as_slice(&self) -> &[&'a str] {
        &self.segs[..self.n]
    }
}

/// The route table: every path the service answers, matched once by
/// [`Route::of`]. [`Route::label`] names it for the metrics (a fixed set,
/// never the raw path: `metrics::ROUTES`, held to this enum by a test),
/// `router::dispatch` matches (method, route) to an endpoint, and
/// [`Route::methods`] lists what a route answers for a 405.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    Reserve,
    GetReservation,
    Confirm,
    Release,
    Extend,
    Sku,
    Waitlist,
    AdminSku,
    AdminPreload,
    AdminReload,
    Healthz,
    Readyz,
    Metrics,
    Openapi,
    Carts,
    GetCart,
    CartConfirm,
    CartRelease,
    CartExtend,
    Jwks,
    /// The fair draw of a SKU's pre-queue (docs/fair-draw.md).
    SkuDraw,
    NotFound,
}

/// Every route's path (`{…}` for its variable segment) and methods, the
/// not-found route aside: `openapi.yaml` documents exactly these
/// (tests/it/openapi.rs).
pub fn table() -> impl Iterator<Item = (&'static str, &'static str)> {
    Route::ALL
        .into_iter()
        .filter(|r| *r != Route::NotFound)
        .map(|r| (r.path(), r.methods()))
}

impl Route {
    /// Every variant, in declaration order (a test holds it complete).
    pub(super) const ALL: [Route; 22] = [
        Route::Reserve,
        Route::GetReservation,
        Route::Confirm,
        Route::Release,
        Route::Extend,
        Route::Sku,
        Route::Waitlist,
        Route::AdminSku,
        Route::AdminPreload,
        Route::AdminReload,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Openapi,
        Route::Carts,
        Route::GetCart,
        Route::CartConfirm,
        Route::CartRelease,
        Route::CartExtend,
        Route::Jwks,
        Route::SkuDraw,
        Route::NotFound,
    ];

    /// The route's path, `{…}` for its variable segment ("" for not found).
    pub(super) fn path(self) -> &'static str {
        match self {
            Route::Reserve => "/v1/reservations",
            Route::GetReservation => "/v1/reservations/{id}",
            Route::Confirm => "/v1/reservations/{id}/confirm",
            Route::Release => "/v1/reservations/{id}/release",
            Route::Extend => "/v1/reservations/{id}/extend",
            Route::Sku => "/v1/skus/{sku}",
            Route::Waitlist => "/v1/waitlist/{ticket}",
            Route::AdminSku => "/admin/v1/skus/{sku}",
            Route::AdminPreload => "/admin/v1/skus/{sku}/preload",
            Route::AdminReload => "/admin/v1/reload",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Openapi => "/openapi.yaml",
            Route::Carts => "/v1/carts",
            Route::GetCart => "/v1/carts/{id}",
            Route::CartConfirm => "/v1/carts/{id}/confirm",
            Route::CartRelease => "/v1/carts/{id}/release",
            Route::CartExtend => "/v1/carts/{id}/extend",
            Route::Jwks => "/.well-known/jwks.json",
            Route::SkuDraw => "/v1/skus/{sku}/draw",
            Route::NotFound => "",
        }
    }

    /// The route of a path's segments, and its one variable segment (the
    /// reservation id, SKU or ticket id; "" for a route without one).
    #[inline]
    pub(super) fn of<'a>(segs: &[&'a str]) -> (Route, &'a str) {
        match *segs {
            ["v1", "reservations"] => (Route::Reserve, ""),
            ["v1", "reservations", id] => (Route::GetReservation, id),
            ["v1", "reservations", id, "confirm"] => (Route::Confirm, id),
            ["v1", "reservations", id, "release"] => (Route::Release, id),
            ["v1", "reservations", id, "extend"] => (Route::Extend, id),
            ["v1", "skus", sku] => (Route::Sku, sku),
            ["v1", "skus", sku, "draw"] => (Route::SkuDraw, sku),
            ["v1", "waitlist", id] => (Route::Waitlist, id),
            ["admin", "v1", "skus", sku] => (Route::AdminSku, sku),
            ["admin", "v1", "skus", sku, "preload"] => (Route::AdminPreload, sku),
            ["admin", "v1", "reload"] => (Route::AdminReload, ""),
            ["healthz"] => (Route::Healthz, ""),
            ["readyz"] => (Route::Readyz, ""),
            ["metrics"] => (Route::Metrics, ""),
            ["openapi.yaml"] => (Route::Openapi, ""),
            ["v1", "carts"] => (Route::Carts, ""),
            ["v1", "carts", id] => (Route::GetCart, id),
            ["v1", "carts", id, "confirm"] => (Route::CartConfirm, id),
            ["v1", "carts", id, "release"] => (Route::CartRelease, id),
            ["v1", "carts", id, "extend"] => (Route::CartExtend, id),
            [".well-known", "jwks.json"] => (Route::Jwks, ""),
            _ => (Route::NotFound, ""),
        }
    }

    /// The `route` label of the HTTP metrics (one of `metrics::ROUTES`).
    #[inline]
    pub(super) fn label(self) -> &'static str {
        match self {
            Route::Reserve => "reserve",
            Route::GetReservation => "get_reservation",
            Route::Confirm => "confirm",
            Route::Release => "release",
            Route::Extend => "extend",
            Route::Sku => "sku",
            Route::Waitlist => "waitlist",
            Route::AdminSku => "admin_sku",
            Route::AdminPreload => "admin_preload",
            Route::AdminReload => "admin_reload",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Openapi => "openapi",
            Route::Carts => "carts",
            Route::GetCart => "get_cart",
            Route::CartConfirm => "cart_confirm",
            Route::CartRelease => "cart_release",
            Route::CartExtend => "cart_extend",
            Route::Jwks => "jwks",
            Route::SkuDraw => "sku_draw",
            Route::NotFound => "not_found",
        }
    }

    /// The methods a route answers, for the `Allow` header of a 405 (RFC
    /// 9110): the arms of `router::dispatch`'s `match` and `router::ops`.
    #[inline]
    pub(super) fn methods(self) -> &'static str {
        match self {
            Route::Reserve
            | Route::Confirm
            | Route::Release
            | Route::Extend
            | Route::AdminPreload
            | Route::AdminReload
            | Route::Carts
            | Route::CartConfirm
            | Route::CartRelease
            | Route::CartExtend => "POST",
            Route::Waitlist => "GET, DELETE",
            _ => "GET",
        }
    }

    /// Health, readiness, metrics, the API document and the public keys of
    /// signed holds: answered before authentication.
    #[inline]
    pub(super) fn is_ops(self) -> bool {
        matches!(
            self,
            Route::Healthz | Route::Readyz | Route::Metrics | Route::Openapi | Route::Jwks
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_of(path: &str) -> &'static str {
        Route::of(Segments::of(path).as_slice()).0.label()
    }

    /// (the exhaustive `match` below makes a new variant fail to compile
    /// until it is listed in [`Route::ALL`])
    const ALL: [Route; 22] = Route::ALL;

    #[test]
    fn the_metrics_route_labels_are_the_route_table() {
        for (i, r) in ALL.iter().enumerate() {
            // exhaustive: a variant missing from ALL is a compile error here
            let pos = match r {
                Route::Reserve => 0,
                Route::GetReservation => 1,
                Route::Confirm => 2,
                Route::Release => 3,
                Route::Extend => 4,
                Route::Sku => 5,
                Route::Waitlist => 6,
                Route::AdminSku => 7,
                Route::AdminPreload => 8,
                Route::AdminReload => 9,
                Route::Healthz => 10,
                Route::Readyz => 11,
                Route::Metrics => 12,
                Route::Openapi => 13,
                Route::Carts => 14,
                Route::GetCart => 15,
                Route::CartConfirm => 16,
                Route::CartRelease => 17,
                Route::CartExtend => 18,
                Route::Jwks => 19,
                Route::SkuDraw => 20,
                Route::NotFound => 21,
            };
            assert_eq!(pos, i);
        }
        assert_eq!(ALL.map(Route::label), crate::metrics::ROUTES);
    }

    #[test]
    fn each_routes_path_is_routed_to_it() {
        for r in Route::ALL {
            if r == Route::NotFound {
                continue;
            }
            let concrete = r.path().replace(['{', '}'], "");
            assert_eq!(
                Route::of(Segments::of(&concrete).as_slice()).0,
                r,
                "{}",
                r.path()
            );
        }
        assert_eq!(table().count(), Route::ALL.len() - 1);
    }

    #[test]
    fn a_route_carries_its_one_variable_segment() {
        assert_eq!(
            Route::of(&["v1", "reservations", "r1", "extend"]),
            (Route::Extend, "r1")
        );
        assert_eq!(
            Route::of(&["admin", "v1", "skus", "A", "preload"]),
            (Route::AdminPreload, "A")
        );
        assert_eq!(Route::of(&["v1", "waitlist", "t"]), (Route::Waitlist, "t"));
        assert_eq!(Route::of(&["v1", "reservations"]), (Route::Reserve, ""));
        assert_eq!(Route::Waitlist.methods(), "GET, DELETE");
        assert_eq!(Route::Healthz.methods(), "GET");
    }

    #[test]
    fn routes_are_found_by_their_segments_and_longer_paths_are_not() {
        assert_eq!(route_of("/v1/reservations"), "reserve");
        assert_eq!(route_of("/v1/reservations/"), "reserve");
        assert_eq!(route_of("/v1/reservations/abc/confirm"), "confirm");
        assert_eq!(route_of("/admin/v1/skus/A/preload"), "admin_preload");
        assert_eq!(route_of("/healthz"), "healthz");
        assert_eq!(route_of("/"), "not_found");
        assert_eq!(route_of("/v1/reservations/a/b/c"), "not_found");
        // more segments than any route has: nothing matches, not even a prefix
        let long = Segments::of("/v1/reservations/a/confirm/b/c/d");
        assert!(!matches!(long.as_slice(), ["v1", ..]));
        assert_eq!(route_of("/v1/a/b/c/d/e/f/g"), "not_found");
        assert_eq!(Segments::of("/a/b/c/d/e/f").as_slice().len(), 6);
    }
}
