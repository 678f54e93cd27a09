// The float32 matrix entries of the kernel table (qtool/kernels/gemm.hpp) on every instruction set
// this CPU runs, against their scalar references: the runtime's panel kernel and the solvers'
// micro-kernel to |y - y_ref| <= 1e-5 * (sum_k |x_k b_k| + |c|) (only the summation order and
// fused multiply-adds may differ), the transposes bit for bit. Each family is selected with
// SelectIsa, so these tests also show that the selection governs these kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernel_inputs.hpp"
#include "qtool/kernels.hpp"
#include "qtool/kernels/gemm.hpp"

namespace qtool::gemm {
namespace {

using kernels::Isa;

class FloatKernelTest : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    saved_ = kernels::ActiveIsa();
    kernels::SelectIsa(GetParam());
  }
  void TearDown() override { kernels::SelectIsa(saved_); }

 private:
  Isa saved_ = Isa::kScalar;
};

// Shapes around the tiles (6 and 8 rows), strips (16 and 32 columns), row blocks (120 and 128)
// and the depth block (256). Each panel is written on its own into a Y one column wider than the
// product, whose extra column must keep its value: a store past a panel's last column shows there.
TEST_P(FloatKernelTest, PanelKernelMatchesTheReference) {
  const PanelKernel kernel = ActivePanelKernel();
  if (GetParam() == Isa::kScalar) {
    EXPECT_EQ(kernel, &PanelsRef);
  }
  for (const int64_t m : {1, 5, 6, 7, 8, 9, 33, 121, 130}) {
    for (const int64_t n : {1, 9, 16, 17, 31, 32, 33, 65}) {
      for (const int64_t k : {1, 17, 256, 257, 600}) {
        SCOPED_TRACE(::testing::Message() << m << "x" << n << "x" << k);
        const uint32_t seed = static_cast<uint32_t>(m * 10007 + n * 101 + k);
        const std::vector<float> x = kernels::RandomFloats(m * k, seed),
                                 b = kernels::RandomFloats(n * k, seed + 1);
        const PackedMatrix packed = Pack(b.data(), n, k);
        const int64_t ldy = n + 1;
        std::vector<float> got(static_cast<size_t>(m * ldy), -7.0f), want = got;
        for (int64_t p = 0; p < packed.panels(); ++p) {
          kernel(x.data(), k, m, packed, p, p + 1, got.data(), ldy);
        }
        PanelsRef(x.data(), k, m, packed, 0, packed.panels(), want.data(), ldy);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double l1 = 0.0;
            for (int64_t kk = 0; kk < k; ++kk) {
              l1 += std::fabs(static_cast<double>(x[i * k + kk]) * b[j * k + kk]);
            }
            ASSERT_NEAR(got[i * ldy + j], want[i * ldy + j], 1e-5 * l1) << i << ", " << j;
          }
          ASSERT_EQ(got[i * ldy + n], -7.0f) << "row " << i;
        }
      }
    }
  }
}

// c = c0 + alpha * A * B for depths around the solvers' (16) and the cache block's (192), into a C
// wider than the tile whose columns past the tile must keep their values.
TEST_P(FloatKernelTest, MicroKernelMatchesTheReference) {
  const MicroKernel kernel = ActiveMicroKernel();
  if (GetParam() == Isa::kScalar) {
    EXPECT_EQ(kernel, &MicroKernelRef);
  }
  for (const int64_t kc : {1, 15, 16, 17, 192}) {
    for (const float alpha : {1.0f, -1.0f, 0.375f}) {
      SCOPED_TRACE(::testing::Message() << "kc " << kc << ", alpha " << alpha);
      const uint32_t seed = static_cast<uint32_t>(kc * 31 + 7);
      const std::vector<float> a = kernels::RandomFloats(kc * kMr, seed),
                               b = kernels::RandomFloats(kc * kNr, seed + 1);
      const int64_t ldc = kNr + 3;
      const std::vector<float> c0 = kernels::RandomFloats(kMr * ldc, seed + 2);
      std::vector<float> got = c0, want = c0;
      kernel(kc, a.data(), b.data(), got.data(), ldc, alpha);
      MicroKernelRef(kc, a.data(), b.data(), want.data(), ldc, alpha);
      for (int64_t i = 0; i < kMr; ++i) {
        for (int64_t j = 0; j < ldc; ++j) {
          if (j >= kNr) {
            ASSERT_EQ(got[i * ldc + j], c0[i * ldc + j]) << i << ", " << j;
            continue;
          }
          double l1 = 0.0;
          for (int64_t p = 0; p < kc; ++p) {
            l1 += std::fabs(static_cast<double>(a[p * kMr + i]) * b[p * kNr + j]);
          }
          const double tol = 1e-5 * (std::fabs(alpha) * l1 + std::fabs(c0[i * ldc + j]));
          ASSERT_NEAR(got[i * ldc + j], want[i * ldc + j], tol) << i << ", " << j;
        }
      }
    }
  }
}

// Every size around the register blocks (4 x 4 floats, 16 x 16 bytes) and the 64 x 64 tiles,
// inside larger strided buffers: the plain loop's result, and nothing outside the destination
// block written.
template <typename T>
void ExpectTransposeMatchesThePlainLoop() {
  for (const int64_t rows : {1, 3, 4, 5, 15, 16, 17, 63, 64, 65, 130}) {
    for (const int64_t cols : {1, 2, 4, 7, 16, 33, 64, 66, 129}) {
      const int64_t src_stride = cols + 3, dst_stride = rows + 5;
      const std::vector<uint8_t> bytes = kernels::RandomBytes(rows * src_stride, 11, 200);
      const std::vector<T> src(bytes.begin(), bytes.end());
      std::vector<T> fast(static_cast<size_t>(cols * dst_stride), T{7}), ref = fast;
      Transpose(src.data(), src_stride, rows, cols, fast.data(), dst_stride);
      TransposeRef(src.data(), src_stride, rows, cols, ref.data(), dst_stride);
      ASSERT_EQ(fast, ref) << rows << "x" << cols;
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) {
          ASSERT_EQ(fast[j * dst_stride + i], src[i * src_stride + j]) << rows << "x" << cols;
        }
      }
      for (int64_t j = 0; j < cols; ++j) {
        for (int64_t i = rows; i < dst_stride; ++i) {
          ASSERT_EQ(fast[j * dst_stride + i], T{7}) << rows << "x" << cols;
        }
      }
    }
  }
}

TEST_P(FloatKernelTest, FloatTransposeMatchesThePlainLoop) {
  ExpectTransposeMatchesThePlainLoop<float>();
}
TEST_P(FloatKernelTest, ByteTransposeMatchesThePlainLoop) {
  ExpectTransposeMatchesThePlainLoop<uint8_t>();
}

std::string FloatKernelIsaName(const ::testing::TestParamInfo<Isa>& info) {
  return kernels::IsaName(info.param);
}

INSTANTIATE_TEST_SUITE_P(Isa, FloatKernelTest, ::testing::ValuesIn(kernels::SupportedIsas()),
                         FloatKernelIsaName);

}  // namespace
}  // namespace qtool::gemm
