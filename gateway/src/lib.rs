//! lb-gateway: the L7 gateway (see issue 5).
