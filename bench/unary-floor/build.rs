fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(["echo.proto"], ["."])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=echo.proto");
    Ok(())
}
