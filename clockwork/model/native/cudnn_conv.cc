// Convolutions served by cuDNN for zoo models built with `cw zoo build --conv cudnn`.
//
// Registers the global function `clockwork.cudnn.conv2d` (apache-tvm-ffi), which the Relax VM
// resolves for the `call_dps_packed` calls that clockwork.model.cudnn_conv puts in place of
// each conv2d (+ bias) (+ residual add) (+ relu) at build time:
//
//   conv2d(x, w, bias, [z], attrs, y)
//     x NHWC float16, w OHWI float16, bias (Cout) float16, z (residual) like y, y NHWC float16;
//     attrs = (stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, relu)
//     y = act(conv(x, w) + z + bias), accumulated in float32 (tensor cores)
//
// Predictability: the cuDNN handle, descriptors, algorithm and workspace are fixed the first
// time a shape is seen (the worker runs every batch size once at load), never per call: the
// algorithm comes from cuDNN's heuristics (deterministic for a GPU and cuDNN version; no
// cudnnFind benchmarking) and every plan shares one workspace per GPU, allocated once and
// never freed or grown, so CUDA graphs captured over these calls stay valid. Each call runs on
// the stream TVM launches on (TVMFFIEnvGetStream), so it is captured with the rest of the model.
//
// Modes (CLOCKWORK_CUDNN_MODE, read when a plan is made): "fused" (default) runs one
// cudnnConvolutionBiasActivationForward (relu needs cuDNN's IMPLICIT_PRECOMP_GEMM algorithm);
// "heuristic" takes cuDNN's first heuristic algorithm and runs relu as a second call.
#include <cuda_runtime.h>
#include <cudnn.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace {

using tvm::ffi::AnyView;
using tvm::ffi::PackedArgs;
using tvm::ffi::Shape;

#define CW_CUDNN(call, what)                                                          \
  do {                                                                                \
    cudnnStatus_t st_ = (call);                                                       \
    if (st_ != CUDNN_STATUS_SUCCESS)                                                  \
      TVM_FFI_THROW(RuntimeError) << "cuDNN " << what << ": " << cudnnGetErrorString(st_); \
  } while (0)

// One way to run a conv: an algorithm, relu fused or as a second call.
struct Choice {
  cudnnConvolutionFwdAlgo_t algo;
  bool separate_relu;
};

struct Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnActivationDescriptor_t act = nullptr, relu = nullptr;
  std::vector<Choice> choices;   // in order of preference; the first that runs is kept
  size_t chosen = 0;
  bool ready = false;            // set by the first call that ran (at model load)
  size_t workspace = 0;
  bool has_relu = false;
  std::string shape;
  std::string describe;
};

struct Gpu {
  cudnnHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_size = 0;
  std::map<std::vector<int64_t>, Plan> plans;
};

std::mutex mu;
std::map<int, Gpu> gpus;

size_t WorkspaceBytes() {
  const char* v = std::getenv("CLOCKWORK_CUDNN_WORKSPACE_MB");
  long mb = v ? std::atol(v) : 64;
  return static_cast<size_t>(mb > 0 ? mb : 64) << 20;
}

bool HeuristicMode() {
  const char* v = std::getenv("CLOCKWORK_CUDNN_MODE");
  return v && std::strcmp(v, "heuristic") == 0;
}

Gpu& GpuFor(int device) {
  Gpu& g = gpus[device];
  if (g.handle == nullptr) {                 // first plan on this GPU: at model load, not per call
    int cur = 0;
    cudaGetDevice(&cur);
    if (cur != device) cudaSetDevice(device);
    CW_CUDNN(cudnnCreate(&g.handle), "create handle");
    g.workspace_size = WorkspaceBytes();
    cudaError_t e = cudaMalloc(&g.workspace, g.workspace_size);
    if (cur != device) cudaSetDevice(cur);
    if (e != cudaSuccess)
      TVM_FFI_THROW(RuntimeError) << "cuDNN workspace (" << (g.workspace_size >> 20)
                                  << " MiB): " << cudaGetErrorString(e);
  }
  return g;
}

void* Data(const DLTensor* d) { return static_cast<char*>(d->data) + d->byte_offset; }

void CheckTensor(const DLTensor* d, int ndim, const char* what) {
  if (d->ndim != ndim || d->dtype.code != kDLFloat || d->dtype.bits != 16 || d->dtype.lanes != 1)
    TVM_FFI_THROW(ValueError) << "clockwork.cudnn.conv2d: " << what << " must be a "
                              << ndim << "-d float16 tensor";
  if (d->device.device_type != kDLCUDA)
    TVM_FFI_THROW(ValueError) << "clockwork.cudnn.conv2d: " << what << " is not on a CUDA GPU";
}

Plan MakePlan(Gpu& g, const DLTensor* x, const DLTensor* w, const DLTensor* y,
              const std::vector<int64_t>& a, bool heuristic) {
  Plan p;
  const int n = x->shape[0], h = x->shape[1], wd = x->shape[2], c = x->shape[3];
  const int k = w->shape[0], r = w->shape[1], s = w->shape[2];
  if (w->shape[3] != c || y->shape[3] != k || y->shape[0] != n)
    TVM_FFI_THROW(ValueError) << "clockwork.cudnn.conv2d: shapes do not agree (x NHWC, w OHWI, y NHWC)";
  CW_CUDNN(cudnnCreateTensorDescriptor(&p.x), "descriptor");
  CW_CUDNN(cudnnCreateTensorDescriptor(&p.y), "descriptor");
  CW_CUDNN(cudnnCreateTensorDescriptor(&p.bias), "descriptor");
  CW_CUDNN(cudnnCreateFilterDescriptor(&p.w), "descriptor");
  CW_CUDNN(cudnnCreateConvolutionDescriptor(&p.conv), "descriptor");
  CW_CUDNN(cudnnCreateActivationDescriptor(&p.act), "descriptor");
  CW_CUDNN(cudnnSetTensor4dDescriptor(p.x, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, n, c, h, wd), "x");
  CW_CUDNN(cudnnSetFilter4dDescriptor(p.w, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, k, c, r, s), "w");
  CW_CUDNN(cudnnSetConvolution2dDescriptor(p.conv, a[2], a[3], a[0], a[1], a[4], a[5],
                                           CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT), "conv");
  CW_CUDNN(cudnnSetConvolutionMathType(p.conv, CUDNN_TENSOR_OP_MATH), "math type");
  int on, oc, oh, ow;
  CW_CUDNN(cudnnGetConvolution2dForwardOutputDim(p.conv, p.x, p.w, &on, &oc, &oh, &ow), "out dim");
  if (on != n || oc != k || oh != y->shape[1] || ow != y->shape[2])
    TVM_FFI_THROW(ValueError) << "clockwork.cudnn.conv2d: output shape (" << y->shape[1] << ", "
                              << y->shape[2] << ") is not what the conv gives (" << oh << ", " << ow << ")";
  CW_CUDNN(cudnnSetTensor4dDescriptor(p.y, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, n, k, oh, ow), "y");
  CW_CUDNN(cudnnSetTensor4dDescriptor(p.bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_HALF, 1, k, 1, 1), "bias");
  p.has_relu = a[6] != 0;
  std::ostringstream d;
  d << "x " << n << "x" << h << "x" << wd << "x" << c << " w " << k << "x" << r << "x" << s
    << " s" << a[0] << " p" << a[2] << (p.has_relu ? " relu" : "");
  p.shape = d.str();
  // fused mode: relu fused (cuDNN allows that only with IMPLICIT_PRECOMP_GEMM) first; then, as
  // in heuristic mode, cuDNN's heuristic algorithms in their order with relu as a second call
  if (p.has_relu && !heuristic)
    p.choices.push_back({CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, false});
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int got = 0;
  CW_CUDNN(cudnnGetConvolutionForwardAlgorithm_v7(g.handle, p.x, p.w, p.conv, p.y,
                                                  CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, perf),
           "heuristics");
  for (int i = 0; i < got; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= g.workspace_size)
      p.choices.push_back({perf[i].algo, p.has_relu});
  if (p.has_relu) {
    CW_CUDNN(cudnnCreateActivationDescriptor(&p.relu), "descriptor");
    CW_CUDNN(cudnnSetActivationDescriptor(p.relu, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0),
             "relu");
  }
  if (p.choices.empty()) TVM_FFI_THROW(RuntimeError) << "cuDNN: no algorithm for conv " << p.shape;
  return p;
}

// Make choice i current; false if its workspace does not fit.
bool Choose(Gpu& g, Plan& p, size_t i) {
  const Choice& c = p.choices[i];
  p.chosen = i;
  CW_CUDNN(cudnnSetActivationDescriptor(p.act, p.has_relu && !c.separate_relu ? CUDNN_ACTIVATION_RELU
                                                                               : CUDNN_ACTIVATION_IDENTITY,
                                        CUDNN_NOT_PROPAGATE_NAN, 0.0), "activation");
  if (cudnnGetConvolutionForwardWorkspaceSize(g.handle, p.x, p.w, p.conv, p.y, c.algo, &p.workspace) !=
          CUDNN_STATUS_SUCCESS || p.workspace > g.workspace_size)
    return false;
  std::ostringstream d;
  d << p.shape << ": algo " << static_cast<int>(c.algo) << (c.separate_relu ? " + relu call" : "")
    << ", workspace " << p.workspace << " (choice " << i + 1 << " of " << p.choices.size() << ")";
  p.describe = d.str();
  return true;
}

cudnnStatus_t Run(Gpu& g, const Plan& p, const void* x, const void* w, const void* z, bool has_z,
                  const void* bias, void* y) {
  const float one = 1.0f, zero = 0.0f;
  const Choice& c = p.choices[p.chosen];
  cudnnStatus_t st = cudnnConvolutionBiasActivationForward(
      g.handle, &one, p.x, x, p.w, w, p.conv, c.algo, g.workspace, p.workspace,
      has_z ? &one : &zero, p.y, z, p.bias, bias, p.act, p.y, y);
  if (st == CUDNN_STATUS_SUCCESS && c.separate_relu)
    st = cudnnActivationForward(g.handle, p.relu, &one, p.y, y, &zero, p.y, y);
  return st;
}

// conv2d(x, w, bias, [z], attrs, y)
void Conv2d(PackedArgs args, tvm::ffi::Any* rv) {
  const int nargs = args.size();
  if (nargs != 5 && nargs != 6)
    TVM_FFI_THROW(TypeError) << "clockwork.cudnn.conv2d takes (x, w, bias, [z], attrs, y), got "
                             << nargs << " arguments";
  const bool has_z = nargs == 6;
  const DLTensor* dx = args[0].cast<DLTensor*>();
  const DLTensor* dw = args[1].cast<DLTensor*>();
  const DLTensor* db = args[2].cast<DLTensor*>();
  Shape attrs = args[has_z ? 4 : 3].cast<Shape>();
  const DLTensor* dy = args[nargs - 1].cast<DLTensor*>();
  CheckTensor(dx, 4, "x");
  CheckTensor(dw, 4, "w");
  CheckTensor(dy, 4, "y");
  if (attrs.size() != 7) TVM_FFI_THROW(ValueError) << "clockwork.cudnn.conv2d: attrs needs 7 values";
  if (db->dtype.code != kDLFloat || db->dtype.bits != 16 || db->shape[db->ndim - 1] != dw->shape[0])
    TVM_FFI_THROW(ValueError) << "clockwork.cudnn.conv2d: bias must be float16 with Cout values";
  const void* z = Data(dy);
  if (has_z) {
    const DLTensor* dz = args[3].cast<DLTensor*>();
    CheckTensor(dz, 4, "z");
    for (int i = 0; i < 4; ++i)
      if (dz->shape[i] != dy->shape[i])
        TVM_FFI_THROW(ValueError) << "clockwork.cudnn.conv2d: residual shape differs from output";
    z = Data(dz);
  }
  const int device = dx->device.device_id;
  const bool heuristic = HeuristicMode();
  std::vector<int64_t> key(attrs.begin(), attrs.end());
  for (int i = 0; i < 4; ++i) key.push_back(dx->shape[i]);
  for (int i = 0; i < 4; ++i) key.push_back(dw->shape[i]);
  key.push_back(heuristic);
  std::lock_guard<std::mutex> lock(mu);
  Gpu& g = GpuFor(device);
  auto it = g.plans.find(key);
  if (it == g.plans.end()) it = g.plans.emplace(key, MakePlan(g, dx, dw, dy, key, heuristic)).first;
  Plan& p = it->second;
  auto stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(kDLCUDA, device));
  CW_CUDNN(cudnnSetStream(g.handle, stream), "set stream");
  if (p.ready) {
    CW_CUDNN(Run(g, p, Data(dx), Data(dw), z, has_z, Data(db), Data(dy)), "conv " + p.describe);
    return;
  }
  // first call of this plan (model load): the first choice that runs is kept for good
  cudnnStatus_t st = CUDNN_STATUS_NOT_SUPPORTED;
  for (size_t i = 0; i < p.choices.size(); ++i) {
    if (!Choose(g, p, i)) continue;
    st = Run(g, p, Data(dx), Data(dw), z, has_z, Data(db), Data(dy));
    if (st == CUDNN_STATUS_SUCCESS) {
      p.ready = true;
      return;
    }
    if (st != CUDNN_STATUS_NOT_SUPPORTED && st != CUDNN_STATUS_BAD_PARAM) break;
  }
  CW_CUDNN(st, "conv " + p.shape);
}

std::string Plans() {
  std::lock_guard<std::mutex> lock(mu);
  std::ostringstream out;
  for (auto& [dev, g] : gpus)
    for (auto& [key, p] : g.plans) out << "gpu " << dev << ": " << p.describe << "\n";
  return out.str();
}

void Reset() {          // drop plans (benchmarks switching modes); handle and workspace stay
  std::lock_guard<std::mutex> lock(mu);
  for (auto& [dev, g] : gpus) {
    for (auto& [key, p] : g.plans) {
      cudnnDestroyTensorDescriptor(p.x);
      cudnnDestroyTensorDescriptor(p.y);
      cudnnDestroyTensorDescriptor(p.bias);
      cudnnDestroyFilterDescriptor(p.w);
      cudnnDestroyConvolutionDescriptor(p.conv);
      cudnnDestroyActivationDescriptor(p.act);
      if (p.relu) cudnnDestroyActivationDescriptor(p.relu);
    }
    g.plans.clear();
  }
}

}  // namespace

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def_packed("clockwork.cudnn.conv2d", Conv2d)
      .def("clockwork.cudnn.version", []() -> int64_t { return cudnnGetVersion(); })
      .def("clockwork.cudnn.plans", []() -> std::string { return Plans(); })
      .def("clockwork.cudnn.reset", []() { Reset(); });
}
