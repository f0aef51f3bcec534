//! The one door to the backends. The cache layer (and any route with a backend other than a
//! plain target group) asks [`fetch`], which chooses: a target group through `upstream`, a
//! `files:` directory, or the image transformer; [`fill`] is the cache layer's miss, which asks
//! the shield parent first where there is one. Nothing below this door calls back up.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};

use crate::body::{Body, BoxError};
use crate::context::{Call, Outcome};
use crate::error::ProxyError;
use crate::group::TargetGroup;

/// What answers a request: a target group, a directory, or the image transformer (and, later,
/// object stores and others — each a new arm here).
#[derive(Clone, Copy)]
pub(crate) enum Backend<'a> {
    Group(&'a Arc<TargetGroup>),
    /// `origin = "files:DIR"`.
    Files(&'a Arc<crate::files::FilesOrigin>),
    /// Image URLs: the transformer, which fetches originals from its own source.
    Images(&'a Arc<crate::images::ImageService>),
}

/// [`Backend`] held beyond the request (a background refresh).
pub(crate) enum OwnedBackend {
    Group(Arc<TargetGroup>),
    Files(Arc<crate::files::FilesOrigin>),
    Images(Arc<crate::images::ImageService>),
}

impl Backend<'_> {
    pub(crate) fn to_owned(self) -> OwnedBackend {
        match self {
            Backend::Group(g) => OwnedBackend::Group(g.clone()),
            Backend::Files(f) => OwnedBackend::Files(f.clone()),
            Backend::Images(i) => OwnedBackend::Images(i.clone()),
        }
    }
}

impl OwnedBackend {
    pub(crate) fn borrow(&self) -> Backend<'_> {
        match self {
            OwnedBackend::Group(g) => Backend::Group(g),
            OwnedBackend::Files(f) => Backend::Files(f),
            OwnedBackend::Images(i) => Backend::Images(i),
        }
    }
}

/// A request's context with the backend that answers it. Derefs to its [`Call`].
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub call: Call<'a>,
    pub backend: Backend<'a>,
}

impl<'a> std::ops::Deref for Ctx<'a> {
    type Target = Call<'a>;

    fn deref(&self) -> &Call<'a> {
        &self.call
    }
}

/// The backend's answer to `req`.
pub(crate) async fn fetch<B>(cx: Ctx<'_>, req: Request<B>, out: &mut Outcome) -> Result<Response<Body>, ProxyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match cx.backend {
        Backend::Group(g) => crate::upstream::send(cx.call, g, req, out).await,
        Backend::Images(svc) => Box::pin(crate::images::render(cx.call, svc, req, out)).await,
        Backend::Files(files) => {
            let (parts, _) = req.into_parts();
            out.source = crate::metrics::Source::Target;
            Ok(crate::files::serve(files, &parts.method, parts.uri.path(), parts.uri.query(), &parts.headers).await)
        }
    }
}

/// A cache miss: the shield parent first when one is configured and may answer for this
/// backend (a group or a directory — never the transformer, whose misses are cheap to make
/// locally and whose originals the parent fetches anyway), else the backend.
pub(crate) async fn fill<B>(cx: Ctx<'_>, req: Request<B>, out: &mut Outcome) -> Result<Response<Body>, ProxyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if matches!(cx.backend, Backend::Group(_) | Backend::Files(_)) {
        if let Some(resp) = crate::shield::via_parent(cx.call, &req, out).await {
            return Ok(resp);
        }
    }
    fetch(cx, req, out).await
}
