//! SWIM membership (foca) over the transport.
