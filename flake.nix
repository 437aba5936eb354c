{
  description = "kv: a small distributed key-value server (the Mix and OTP guide's, in Rust)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, flake-utils }:
    flake-utils.lib.eachDefaultSystem (system:
      let
        pkgs = nixpkgs.legacyPackages.${system};
      in
      {
        # `nix build` builds the kv binary from Cargo.lock; no network at build time.
        packages.default = pkgs.rustPlatform.buildRustPackage {
          pname = "kv";
          version = "0.1.0";
          src = ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # The integration tests open many loopback sockets and threads; they run in
          # CI through .ci/run rather than inside the Nix sandbox.
          doCheck = false;
          meta.mainProgram = "kv";
        };

        # `nix develop` gives the toolchain and netcat for typing the guide's session.
        devShells.default = pkgs.mkShell {
          packages = [
            pkgs.rustc
            pkgs.cargo
            pkgs.rustfmt
            pkgs.clippy
            pkgs.netcat-openbsd
          ];
        };
      });
}
