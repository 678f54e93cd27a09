# Per-ISA compile flags for kernel translation units, chosen by file name suffix. Each ISA's code
# lives in its own translation units so that no function compiled for a wider ISA can be inlined
# into code that runs on every CPU. These units and the reference kernels under src/kernels/ are
# compiled without floating-point contraction: a multiply and an add stay two roundings on every
# path unless the code asks for a fused multiply-add.
set(QTOOL_FLAGS_AVX2 -mavx2 -mfma -mf16c -mbmi2)
set(QTOOL_FLAGS_AVXVNNI ${QTOOL_FLAGS_AVX2} -mavxvnni)
set(QTOOL_FLAGS_AVX512 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512vnni -mavx512bf16
    -mfma -mf16c -mbmi2)
set(QTOOL_FLAGS_NEON "")
set(QTOOL_FLAGS_NONE "")

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  set(QTOOL_ARCH x86)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$")
  set(QTOOL_ARCH arm)
else()
  set(QTOOL_ARCH other)
endif()

function(qtool_apply_isa_flags sources)
  foreach(src IN LISTS sources)
    if(src MATCHES "_avx2\\.cpp$")
      set(isa AVX2)
      set(arch x86)
    elseif(src MATCHES "_avxvnni\\.cpp$")
      set(isa AVXVNNI)
      set(arch x86)
    elseif(src MATCHES "_avx512\\.cpp$")
      set(isa AVX512)
      set(arch x86)
    elseif(src MATCHES "_neon\\.cpp$")
      set(isa NEON)
      set(arch arm)
    elseif(src MATCHES "/src/kernels/")
      set(isa NONE)
      set(arch ${QTOOL_ARCH})
    else()
      continue()
    endif()
    if(NOT QTOOL_ARCH STREQUAL arch)
      # Not this machine's architecture: the file compiles to nothing (its body is guarded by
      # the architecture macros), so it keeps no flags.
      continue()
    endif()
    set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS
                                                  "${QTOOL_FLAGS_${isa}};-ffp-contract=off")
  endforeach()
endfunction()
