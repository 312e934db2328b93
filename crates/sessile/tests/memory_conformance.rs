//! The memory store passes the store conformance suite.

sessile_conformance::store_conformance!(|| async { (sessile::MemoryStore::new(), ()) });
