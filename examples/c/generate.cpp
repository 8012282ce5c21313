// libella from C++: the owners of ella.hpp, a cached prompt, the caller's own pixel buffer and a job.
//   generate_cpp T5_DIR ELLA_FILE ELLA_CONFIG_OR_- SD_DIR
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "ella.hpp"

namespace {
void check(ella_status status, const char *what) {
    if (status != ELLA_STATUS_OK) {
        throw std::runtime_error(std::string(what) + ": " + ella_status_name(status) + ": " +
                                 ella_last_error_message());
    }
}
}  // namespace

int main(int argc, char **argv) try {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s T5_DIR ELLA_FILE ELLA_CONFIG_OR_- SD_DIR\n", argv[0]);
        return 2;
    }
    ella_model_params params = ella_model_params_default();
    params.t5_path = argv[1];
    params.ella_path = argv[2];
    params.ella_config_path = std::strcmp(argv[3], "-") == 0 ? nullptr : argv[3];
    params.sd_path = argv[4];
    ella_model *raw_model = nullptr;
    check(ella_model_load(&params, &raw_model), "load");
    ella_model_ptr model(raw_model);
    ella_context *raw_context = nullptr;
    check(ella_context_new(model.get(), nullptr, &raw_context), "context");
    ella_context_ptr context(raw_context);

    // The prompt encoded once; T5 is then freed and generation runs from the cache.
    ella_prompt *raw_prompt = nullptr;
    check(ella_prompt_new(model.get(), "a watercolor lighthouse at dusk", nullptr, 0, &raw_prompt), "prompt");
    ella_prompt_ptr prompt(raw_prompt);
    check(ella_model_free_t5(model.get()), "free T5");

    ella_generate_request request = ella_generate_request_default();
    request.prompt_cache = prompt.get();
    request.width = request.height = 32;
    request.steps = 3;
    request.pixel_format = ELLA_PIXEL_FORMAT_RGBA8;
    std::vector<uint8_t> pixels(32 * 32 * 4);
    check(ella_context_generate_into(context.get(), &request, pixels.data(), pixels.size(), 32 * 4), "generate");
    ella_image *raw_image = nullptr;
    check(ella_context_generate(context.get(), &request, &raw_image), "generate an owned image");
    ella_image_ptr image(raw_image);
    if (std::memcmp(image->pixels, pixels.data(), pixels.size()) != 0) {
        throw std::runtime_error("the same request gave two different images");
    }

    // The same request as a job: submitted, waited for, its image taken (ella_job_ptr frees
    // the job, cancelling it if it had not finished).
    ella_job *raw_job = nullptr;
    check(ella_job_submit(context.get(), &request, &raw_job), "submit a job");
    ella_job_ptr job(raw_job);
    check(ella_job_wait(job.get(), ELLA_WAIT_FOREVER), "the job");
    check(ella_job_take_image(job.get(), &raw_image), "the job's image");
    ella_image_ptr job_image(raw_image);
    if (std::memcmp(job_image->pixels, pixels.data(), pixels.size()) != 0) {
        throw std::runtime_error("the job's image differs from the call's");
    }
    std::printf("C++ example passed: %u×%u RGBA, first pixel %u %u %u %u\n", request.width, request.height, pixels[0],
                pixels[1], pixels[2], pixels[3]);
    return 0;
} catch (const std::exception &e) {
    std::fprintf(stderr, "FAILED: %s\n", e.what());
    return 1;
}
