//! Links the addon against Node's symbols at load time (napi-build sets the
//! platform's linker flags).
fn main() {
    napi_build::setup();
}
