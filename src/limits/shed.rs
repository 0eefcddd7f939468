//! Load shedding: the whole gateway's cap on requests in flight and each client address's
//! share of it. Over either, a request is answered `503` at once, before anything else is
//! done for it; an admitted request's place rides on its response body to its last byte.
//! [`ShedLayer`] is the tower layer that does it, in front of CORS and the router.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{HeaderValue, Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::address_key;
use crate::Body;
use crate::error::{ApiError, Code};

/// The whole gateway's cap on requests in flight, and each client address's share of it;
/// over either, requests are shed at once.
#[derive(Debug)]
pub struct Shed {
    permits: Arc<Semaphore>,
    per_address: usize,
    held: Held,
}

/// Requests in flight per client address.
type Held = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One request's place, held until its response body ends.
#[derive(Debug)]
pub struct ShedPermit {
    _place: OwnedSemaphorePermit,
    address: Option<(Held, IpAddr)>,
}

impl Drop for ShedPermit {
    fn drop(&mut self) {
        if let Some((held, key)) = self.address.take()
            && let Ok(mut held) = held.lock()
            && let Some(n) = held.get_mut(&key)
        {
            *n -= 1;
            if *n == 0 {
                held.remove(&key);
            }
        }
    }
}

/// A permit a request holds to its end: its place in the gateway, or in its principal's
/// concurrent transfers.
#[derive(Debug)]
pub enum Permit {
    Request(ShedPermit),
    Transfer(OwnedSemaphorePermit),
}

impl Shed {
    pub fn new(max: usize, per_address: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            per_address: per_address.max(1),
            held: Arc::default(),
        }
    }

    /// A place for one request from `client` (unknown: counted only in the whole), held
    /// until its response body ends.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<ShedPermit, ApiError> {
        let overloaded = |message: &'static str| {
            ApiError::new(Code::Overloaded, message)
                .header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
        };
        let place = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| overloaded("the gateway is at capacity; retry shortly"))?;
        let Some(ip) = client else {
            return Ok(ShedPermit {
                _place: place,
                address: None,
            });
        };
        let key = address_key(ip);
        let Ok(mut held) = self.held.lock() else {
            return Err(overloaded("the gateway is at capacity; retry shortly"));
        };
        let n = held.entry(key).or_insert(0);
        if *n >= self.per_address {
            return Err(overloaded(
                "too many requests at once from this address; retry shortly",
            ));
        }
        *n += 1;
        Ok(ShedPermit {
            _place: place,
            address: Some((self.held.clone(), key)),
        })
    }
}

/// The permits a request holds; whoever answers it moves them onto its response body
/// (`api::respond::holding`), so they are released with its last byte.
#[derive(Clone, Debug, Default)]
pub struct Admission(Arc<Mutex<Vec<Permit>>>);

impl Admission {
    pub fn hold(&self, permit: Permit) {
        if let Ok(mut p) = self.0.lock() {
            p.push(permit);
        }
    }

    pub fn take(&self) -> Vec<Permit> {
        self.0
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// Sheds load in front of `S`: a request over the gateway's cap, or its address's share, is
/// answered `503 overloaded` at once; an admitted one carries its place in its
/// [`Admission`].
#[derive(Clone, Debug)]
pub struct ShedLayer {
    shed: Arc<Shed>,
}

impl ShedLayer {
    pub fn new(shed: Arc<Shed>) -> Self {
        Self { shed }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shedding<S>;

    fn layer(&self, inner: S) -> Shedding<S> {
        Shedding {
            inner,
            shed: self.shed.clone(),
        }
    }
}

/// [`ShedLayer`]'s service.
#[derive(Clone, Debug)]
pub struct Shedding<S> {
    inner: S,
    shed: Arc<Shed>,
}

impl<S> tower::Service<Request<Body>> for Shedding<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let client = req.extensions().get::<crate::obs::ClientIp>().map(|c| c.0);
        match self.shed.admit(client) {
            Ok(permit) => {
                let admission = Admission::default();
                admission.hold(Permit::Request(permit));
                req.extensions_mut().insert(admission);
                Either::Right(self.inner.call(req))
            }
            Err(err) => Either::Left(std::future::ready(Ok(crate::api::respond::refuse(
                &req, &err,
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shed_refuses_at_capacity() {
        let s = Shed::new(1, 1);
        let p = s.admit(None).unwrap();
        assert_eq!(s.admit(None).unwrap_err().code, Code::Overloaded);
        drop(p);
        assert!(s.admit(None).is_ok());
    }

    #[test]
    fn one_address_takes_only_its_share() {
        let s = Shed::new(4, 2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let a_too: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let b: IpAddr = "192.0.2.7".parse().unwrap();
        let first = s.admit(Some(a)).unwrap();
        let _second = s.admit(Some(a_too)).unwrap();
        let refused = s.admit(Some(a)).unwrap_err();
        assert_eq!(refused.code, Code::Overloaded);
        assert!(refused.message.contains("this address"));
        let _b1 = s.admit(Some(b)).unwrap();
        let _b2 = s.admit(Some(b)).unwrap();
        assert!(s.admit(Some(b)).is_err(), "the whole is full");
        drop(first);
        assert!(s.admit(Some(a)).is_ok(), "a place given back is free again");
        assert!(s.held.lock().unwrap().len() <= 2);
    }
}
