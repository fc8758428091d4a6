// qpass-run: run a qpass artifact (model.so, a TVM Relax executable) without Python.
//
//   qpass-run model.so input0.npy [input1.npy ...] -o OUT_PREFIX
//
// Inputs are .npy files in the order of the model's inputs (meta.json lists them); each output k
// is written to OUT_PREFIX<k>.npy. Needs only libtvm_ffi.so and libtvm_runtime.so (from the
// apache-tvm / apache-tvm-ffi wheels of the device's architecture), the latter preloaded.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct HostAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = (t->dtype.bits * t->dtype.lanes + 7) / 8;
    for (int i = 0; i < t->ndim; ++i) bytes *= static_cast<size_t>(t->shape[i]);
    t->data = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

struct NpyType {
  const char* descr;
  DLDataType dtype;
};

const NpyType kTypes[] = {
    {"<f4", {kDLFloat, 32, 1}}, {"|i1", {kDLInt, 8, 1}},  {"|u1", {kDLUInt, 8, 1}},
    {"<i4", {kDLInt, 32, 1}},   {"<i8", {kDLInt, 64, 1}}, {"<f2", {kDLFloat, 16, 1}},
};

[[noreturn]] void Fail(const std::string& message) { throw std::runtime_error(message); }

ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot open " + path);
  char magic[8];
  in.read(magic, 8);
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) Fail(path + " is not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t len16;
    in.read(reinterpret_cast<char*>(&len16), 2);
    header_len = len16;
  } else {
    in.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, ' ');
  in.read(&header[0], header_len);
  if (header.find("'fortran_order': True") != std::string::npos) Fail(path + ": Fortran order is not supported");
  const NpyType* type = nullptr;
  for (const auto& t : kTypes) {
    if (header.find(std::string("'descr': '") + t.descr + "'") != std::string::npos) type = &t;
  }
  if (type == nullptr) Fail(path + ": unsupported dtype in header " + header);
  std::vector<int64_t> shape;
  size_t open = header.find('(', header.find("'shape'")), close = header.find(')', open);
  std::stringstream dims(header.substr(open + 1, close - open - 1));
  for (std::string item; std::getline(dims, item, ',');) {
    if (item.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(item));
  }
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(HostAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                                type->dtype, DLDevice{kDLCPU, 0});
  size_t bytes = type->dtype.bits / 8;
  for (int64_t d : shape) bytes *= static_cast<size_t>(d);
  in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(bytes));
  if (!in) Fail(path + ": file is shorter than its header says");
  return tensor;
}

void WriteNpy(const std::string& path, const ffi::Tensor& tensor) {
  const char* descr = nullptr;
  DLDataType dt = tensor.dtype();
  for (const auto& t : kTypes) {
    if (t.dtype.code == dt.code && t.dtype.bits == dt.bits) descr = t.descr;
  }
  if (descr == nullptr) Fail("output dtype not supported for .npy");
  std::string shape;
  size_t bytes = dt.bits / 8;
  for (int64_t d : tensor.shape()) {
    shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    bytes *= static_cast<size_t>(d);
  }
  if (tensor.shape().size() == 1) shape += ",";
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  uint16_t len = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(reinterpret_cast<const char*>(&len), 2);
  out << header;
  out.write(static_cast<const char*>(tensor.data_ptr()), static_cast<std::streamsize>(bytes));
  if (!out) Fail("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> inputs;
  std::string library, prefix = "output";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-o" && i + 1 < argc) {
      prefix = argv[++i];
    } else if (library.empty()) {
      library = arg;
    } else {
      inputs.push_back(arg);
    }
  }
  if (library.empty()) {
    std::fprintf(stderr, "usage: %s model.so input0.npy [input1.npy ...] [-o OUT_PREFIX]\n", argv[0]);
    return 2;
  }
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(library);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2, static_cast<int>(kDLCPU), 0, 2);
    ffi::Function main_fn = vm->GetFunction("main").value();
    std::vector<ffi::Tensor> tensors;
    for (const auto& path : inputs) tensors.push_back(ReadNpy(path));
    std::vector<ffi::AnyView> args(tensors.begin(), tensors.end());
    ffi::Any result;
    main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    auto outputs = result.cast<ffi::Array<ffi::Tensor>>();
    for (size_t k = 0; k < outputs.size(); ++k) {
      std::string path = prefix + std::to_string(k) + ".npy";
      WriteNpy(path, outputs[k]);
      std::printf("%s\n", path.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qpass-run: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
