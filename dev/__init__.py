"""Python shared by dev/'s scripts, the test suite, bench/ and soak/: see dev/harness."""
