//! Compiles the .proto files with protox (a pure-Rust compiler), so a fresh machine needs no
//! system `protoc`. Generated code lands in OUT_DIR and is never committed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "apache/rocketmq/v2/service.proto",
        "txmq/admin/v1/admin.proto",
        "txmq/cluster/v1/cluster.proto",
        "txmq/v1/transactions.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
