# Cross-compiling for 64-bit Arm Linux with Debian's g++-aarch64-linux-gnu. Dependencies come from
# Debian multiarch (dpkg --add-architecture arm64; libfmt-dev:arm64, libgtest-dev:arm64), found
# under /usr/lib/aarch64-linux-gnu; header-only ones (Eigen, nlohmann-json, CLI11) are shared with
# the host. SentencePiece, whose -dev package is not multiarch, comes from arm64 packages unpacked
# under $QTOOL_ARM_DEPS (scripts/test-arm.sh does this) and is found there by pkg-config. Programs
# run under qemu-aarch64 from qemu-user-static (test discovery included), with the loader and libc
# of the multiarch libc6:arm64 under /lib: the cross toolchain's own copies in /usr/aarch64-linux-gnu
# are an older build, and a loader of one build with the libc of another hangs in pthread_create.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64-static)
if(DEFINED ENV{QTOOL_ARM_DEPS})
  set(ENV{PKG_CONFIG_SYSROOT_DIR} $ENV{QTOOL_ARM_DEPS})
  set(ENV{PKG_CONFIG_LIBDIR} $ENV{QTOOL_ARM_DEPS}/usr/lib/aarch64-linux-gnu/pkgconfig)
  set(CMAKE_EXE_LINKER_FLAGS_INIT "-Wl,-rpath-link,$ENV{QTOOL_ARM_DEPS}/usr/lib/aarch64-linux-gnu")
  set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64-static
      -E LD_LIBRARY_PATH=$ENV{QTOOL_ARM_DEPS}/usr/lib/aarch64-linux-gnu)
endif()
