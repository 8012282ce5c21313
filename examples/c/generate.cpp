// libella from C++: RAII handles and the caller's own pixel buffer.
//   generate_cpp T5_DIR ELLA_FILE ELLA_CONFIG_OR_- SD_DIR
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "ella.h"

namespace {
struct ModelDeleter {
    void operator()(ella_model *m) const { ella_model_free(m); }
};
struct ContextDeleter {
    void operator()(ella_context *c) const { ella_context_free(c); }
};
using Model = std::unique_ptr<ella_model, ModelDeleter>;
using Context = std::unique_ptr<ella_context, ContextDeleter>;

void check(ella_status status, const char *what) {
    if (status != ELLA_STATUS_OK) {
        throw std::runtime_error(std::string(what) + ": " + ella_last_error_message());
    }
}
}  // namespace

int main(int argc, char **argv) try {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s T5_DIR ELLA_FILE ELLA_CONFIG_OR_- SD_DIR\n", argv[0]);
        return 2;
    }
    ella_model_params params = ella_model_default_params();
    params.t5_path = argv[1];
    params.ella_path = argv[2];
    params.ella_config_path = std::strcmp(argv[3], "-") == 0 ? nullptr : argv[3];
    params.sd_path = argv[4];
    ella_model *raw_model = nullptr;
    check(ella_model_load(&params, &raw_model), "load");
    Model model(raw_model);
    ella_context *raw_context = nullptr;
    check(ella_context_new(model.get(), nullptr, &raw_context), "context");
    Context context(raw_context);

    ella_generate_request request = ella_generate_request_default();
    request.prompt = "a watercolor lighthouse at dusk";
    request.width = request.height = 32;
    request.steps = 3;
    request.pixel_format = ELLA_PIXEL_FORMAT_RGBA8;
    std::vector<uint8_t> pixels(32 * 32 * 4);
    check(ella_generate_into(context.get(), &request, pixels.data(), pixels.size(), 32 * 4), "generate");
    std::printf("C++ example passed: %u×%u RGBA, first pixel %u %u %u %u\n", request.width, request.height, pixels[0],
                pixels[1], pixels[2], pixels[3]);
    return 0;
} catch (const std::exception &e) {
    std::fprintf(stderr, "FAILED: %s\n", e.what());
    return 1;
}
