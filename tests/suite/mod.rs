mod certs;
mod intercept;
mod tunnel;
