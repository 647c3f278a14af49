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
// Modes (CLOCKWORK_CUDNN_MODE, read when a plan is made): "graph" (default) builds, once per
// shape, a cuDNN graph-API operation graph conv -> +bias [-> +z] [-> relu] and the execution
// plan of the first engine of heuristics mode A that finalizes and fits the workspace
// (precompiled engines before runtime-compiled ones); each call then only executes that plan.
// The legacy API's modes cost ~50-250 us of host time per call in cuDNN 9 (BENCHMARKS.md):
// "fused" runs one cudnnConvolutionBiasActivationForward (relu fused, which cuDNN allows only
// with its IMPLICIT_PRECOMP_GEMM algorithm); "heuristic" takes cuDNN's first heuristic
// algorithm and runs relu as a second call.
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

struct GraphPlan {
  std::vector<cudnnBackendDescriptor_t> descs;   // every descriptor made (freed by Reset)
  cudnnBackendDescriptor_t plan = nullptr, pack = nullptr;
  void* pack_ptrs[6] = {};                       // pointers the cached variant pack holds
  int64_t workspace = 0;
  bool has_z = false;
  std::string describe;
};

struct Gpu {
  cudnnHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_size = 0;
  std::map<std::vector<int64_t>, Plan> plans;
  std::map<std::vector<int64_t>, GraphPlan> graph_plans;
};

std::mutex mu;
std::map<int, Gpu> gpus;

size_t WorkspaceBytes() {
  const char* v = std::getenv("CLOCKWORK_CUDNN_WORKSPACE_MB");
  long mb = v ? std::atol(v) : 64;
  return static_cast<size_t>(mb > 0 ? mb : 64) << 20;
}

enum Mode { kFused = 0, kHeuristic = 1, kGraph = 2 };

Mode ModeFromEnv() {
  const char* v = std::getenv("CLOCKWORK_CUDNN_MODE");
  if (v && std::strcmp(v, "heuristic") == 0) return kHeuristic;
  if (v && std::strcmp(v, "fused") == 0) return kFused;
  return kGraph;
}

// ---- graph API plans

cudnnBackendDescriptor_t Make(GraphPlan& p, cudnnBackendDescriptorType_t t) {
  cudnnBackendDescriptor_t d = nullptr;
  CW_CUDNN(cudnnBackendCreateDescriptor(t, &d), "create descriptor");
  p.descs.push_back(d);
  return d;
}

void Set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t t,
         int64_t n, const void* v) {
  CW_CUDNN(cudnnBackendSetAttribute(d, a, t, n, v), "set attribute " + std::to_string(a));
}

// An NHWC tensor (dims in cuDNN's N, C, H, W order, strides of channels-last memory).
cudnnBackendDescriptor_t GTensor(GraphPlan& p, int64_t uid, cudnnDataType_t dt, int64_t n, int64_t c,
                                 int64_t h, int64_t w, bool is_virtual) {
  auto d = Make(p, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  int64_t dims[4] = {n, c, h, w}, strides[4] = {h * w * c, 1, w * c, c}, align = 16;
  Set(d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
  Set(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
  Set(d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
  Set(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
  Set(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
  if (is_virtual) {
    bool v = true;
    Set(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v);
  }
  CW_CUDNN(cudnnBackendFinalize(d), "tensor");
  return d;
}

cudnnBackendDescriptor_t GPointwise(GraphPlan& p, cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                                    cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y) {
  auto pw = Make(p, CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  cudnnDataType_t prec = CUDNN_DATA_FLOAT;
  Set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
  Set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
  CW_CUDNN(cudnnBackendFinalize(pw), "pointwise");
  auto op = Make(p, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
  Set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw);
  Set(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
  if (b) Set(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
  Set(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
  CW_CUDNN(cudnnBackendFinalize(op), "pointwise op");
  return op;
}

enum Uid : int64_t { kX = 1, kW, kB, kZ, kY };

GraphPlan MakeGraphPlan(cudnnHandle_t handle, size_t workspace_limit, const DLTensor* x,
                        const DLTensor* w, const DLTensor* y, const std::vector<int64_t>& a, bool has_z) {
  GraphPlan p;
  p.has_z = has_z;
  const int64_t n = x->shape[0], h = x->shape[1], wd = x->shape[2], c = x->shape[3];
  const int64_t k = w->shape[0], r = w->shape[1], s = w->shape[2];
  const int64_t oh = y->shape[1], ow = y->shape[2];
  const bool relu = a[6] != 0;
  auto tx = GTensor(p, kX, CUDNN_DATA_HALF, n, c, h, wd, false);
  auto tw = GTensor(p, kW, CUDNN_DATA_HALF, k, c, r, s, false);
  auto tb = GTensor(p, kB, CUDNN_DATA_HALF, 1, k, 1, 1, false);
  auto ty = GTensor(p, kY, CUDNN_DATA_HALF, n, k, oh, ow, false);
  int64_t next_virtual = 100;
  auto virt = [&]() { return GTensor(p, next_virtual++, CUDNN_DATA_FLOAT, n, k, oh, ow, true); };
  auto conv = Make(p, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  int64_t nd = 2, pad[2] = {a[2], a[3]}, stride[2] = {a[0], a[1]}, dil[2] = {a[4], a[5]};
  cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  Set(conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &nd);
  Set(conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
  Set(conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
  Set(conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad);
  Set(conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad);
  Set(conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dil);
  Set(conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride);
  CW_CUDNN(cudnnBackendFinalize(conv), "convolution");
  std::vector<cudnnBackendDescriptor_t> ops;
  auto cur = virt();
  auto cop = Make(p, CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR);
  float alpha = 1.0f, beta = 0.0f;
  Set(cop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &tx);
  Set(cop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &tw);
  Set(cop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cur);
  Set(cop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv);
  Set(cop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
  Set(cop, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
  CW_CUDNN(cudnnBackendFinalize(cop), "convolution op");
  ops.push_back(cop);
  auto out = (has_z || relu) ? virt() : ty;
  ops.push_back(GPointwise(p, CUDNN_POINTWISE_ADD, cur, tb, out));
  cur = out;
  if (has_z) {
    auto tz = GTensor(p, kZ, CUDNN_DATA_HALF, n, k, oh, ow, false);
    out = relu ? virt() : ty;
    ops.push_back(GPointwise(p, CUDNN_POINTWISE_ADD, cur, tz, out));
    cur = out;
  }
  if (relu) ops.push_back(GPointwise(p, CUDNN_POINTWISE_RELU_FWD, cur, nullptr, ty));
  auto graph = Make(p, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  Set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, ops.size(), ops.data());
  Set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  CW_CUDNN(cudnnBackendFinalize(graph), "operation graph");
  auto heur = Make(p, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  cudnnBackendHeurMode_t hmode = CUDNN_HEUR_MODE_A;
  Set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
  Set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &hmode);
  CW_CUDNN(cudnnBackendFinalize(heur), "heuristics");
  int64_t count = 0;
  CW_CUDNN(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                    0, &count, nullptr), "heuristics count");
  std::vector<cudnnBackendDescriptor_t> cfgs;
  for (int64_t i = 0; i < count; ++i) cfgs.push_back(Make(p, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
  int64_t got = 0;
  if (count > 0)
    CW_CUDNN(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                      count, &got, cfgs.data()), "heuristics results");
  std::ostringstream d;
  d << "x " << n << "x" << h << "x" << wd << "x" << c << " w " << k << "x" << r << "x" << s << " s"
    << a[0] << " p" << a[2] << (has_z ? " +z" : "") << (relu ? " relu" : "");
  for (int pass = 0; pass < 2 && !p.plan; ++pass) {     // precompiled engines first
    for (int64_t i = 0; i < got && !p.plan; ++i) {
      auto engine = Make(p, CUDNN_BACKEND_ENGINE_DESCRIPTOR);
      int64_t ne = 0, index = -1, nn = 0;
      if (cudnnBackendGetAttribute(cfgs[i], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                   &ne, &engine) != CUDNN_STATUS_SUCCESS)
        continue;
      cudnnBackendBehaviorNote_t notes[16];
      bool compiled = false;
      if (cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE, 16,
                                   &nn, notes) == CUDNN_STATUS_SUCCESS)
        for (int64_t j = 0; j < nn; ++j) compiled |= notes[j] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION;
      if (compiled != (pass == 1)) continue;
      cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &ne, &index);
      cudnnBackendDescriptor_t plan = nullptr;
      if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) != CUDNN_STATUS_SUCCESS)
        continue;
      int64_t ws = 0;
      if (cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle) ==
              CUDNN_STATUS_SUCCESS &&
          cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                   CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]) == CUDNN_STATUS_SUCCESS &&
          cudnnBackendFinalize(plan) == CUDNN_STATUS_SUCCESS &&
          cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &ne,
                                   &ws) == CUDNN_STATUS_SUCCESS &&
          ws >= 0 && static_cast<size_t>(ws) <= workspace_limit) {
        p.plan = plan;
        p.descs.push_back(plan);
        p.workspace = ws;
        d << ": engine " << index << (compiled ? " (runtime compiled)" : "") << ", workspace " << ws
          << " (heuristic choice " << i + 1 << " of " << got << ")";
      } else {
        cudnnBackendDestroyDescriptor(plan);
      }
    }
  }
  if (!p.plan) TVM_FFI_THROW(RuntimeError) << "cuDNN graph API: no engine for conv " << d.str();
  p.describe = d.str();
  return p;
}

void RunGraph(cudnnHandle_t handle, GraphPlan& p, void* workspace, void* x, void* w, void* b, void* z,
              void* y) {
  void* ptrs[6] = {x, w, b, y, z, workspace};
  if (!p.pack || std::memcmp(ptrs, p.pack_ptrs, sizeof(ptrs)) != 0) {   // new addresses: new pack
    if (p.pack) cudnnBackendDestroyDescriptor(p.pack);
    p.pack = nullptr;
    cudnnBackendDescriptor_t pack;
    CW_CUDNN(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack), "variant pack");
    int64_t uids[5] = {kX, kW, kB, kY, kZ};
    void* data[5] = {x, w, b, y, z};
    const int64_t nt = p.has_z ? 5 : 4;
    cudnnStatus_t st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, nt, uids);
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, nt, data);
    if (st == CUDNN_STATUS_SUCCESS)
      st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(pack);
    if (st != CUDNN_STATUS_SUCCESS) {
      cudnnBackendDestroyDescriptor(pack);
      CW_CUDNN(st, "variant pack");
    }
    p.pack = pack;
    std::memcpy(p.pack_ptrs, ptrs, sizeof(ptrs));
  }
  CW_CUDNN(cudnnBackendExecute(handle, p.plan, p.pack), "execute " + p.describe);
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
  const Mode mode = ModeFromEnv();
  const bool heuristic = mode == kHeuristic;
  std::vector<int64_t> key(attrs.begin(), attrs.end());
  for (int i = 0; i < 4; ++i) key.push_back(dx->shape[i]);
  for (int i = 0; i < 4; ++i) key.push_back(dw->shape[i]);
  key.push_back(mode);
  key.push_back(has_z);
  std::lock_guard<std::mutex> lock(mu);
  Gpu& g = GpuFor(device);
  if (mode == kGraph) {
    auto git = g.graph_plans.find(key);
    if (git == g.graph_plans.end())
      git = g.graph_plans.emplace(key, MakeGraphPlan(g.handle, g.workspace_size, dx, dw, dy, key, has_z)).first;
    auto stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(kDLCUDA, device));
    CW_CUDNN(cudnnSetStream(g.handle, stream), "set stream");
    RunGraph(g.handle, git->second, g.workspace, Data(dx), Data(dw), Data(db), const_cast<void*>(z), Data(dy));
    return;
  }
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
  for (auto& [dev, g] : gpus) {
    for (auto& [key, p] : g.plans) out << "gpu " << dev << ": " << p.describe << "\n";
    for (auto& [key, p] : g.graph_plans) out << "gpu " << dev << ": " << p.describe << "\n";
  }
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
    for (auto& [key, p] : g.graph_plans) {
      if (p.pack) cudnnBackendDestroyDescriptor(p.pack);
      for (auto d : p.descs) cudnnBackendDestroyDescriptor(d);
    }
    g.graph_plans.clear();
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
