/*
 * ella for C++: owners that free ella's handles and results, as llama.cpp's llama-cpp.h
 * does for llama.h. Hand-written (ella.h is generated); C++11 or later.
 *
 *   ella_model *raw = nullptr;
 *   if (ella_model_load(&params, &raw) != ELLA_STATUS_OK) { ... }
 *   ella_model_ptr model(raw);           // ella_model_free(raw) when `model` goes away
 *
 * A context keeps its model alive (ella_model_free may run first); free a context before
 * the objects its callbacks use. A job handle may outlive its context (it then reports
 * CANCELLED unless it had finished).
 */
#ifndef ELLA_HPP
#define ELLA_HPP

#ifndef __cplusplus
#error "ella.hpp is for C++; C programs include ella.h"
#endif

#include <memory>

#include "ella.h"

struct ella_model_deleter {
    void operator()(ella_model *model) const { ella_model_free(model); }
};

struct ella_context_deleter {
    void operator()(ella_context *context) const { ella_context_free(context); }
};

struct ella_image_deleter {
    void operator()(ella_image *image) const { ella_image_free(image); }
};

struct ella_prompt_deleter {
    void operator()(ella_prompt *prompt) const { ella_prompt_free(prompt); }
};

struct ella_tensor_deleter {
    void operator()(ella_tensor *tensor) const { ella_tensor_free(tensor); }
};

struct ella_job_deleter {
    void operator()(ella_job *job) const { ella_job_free(job); }
};

typedef std::unique_ptr<ella_model, ella_model_deleter> ella_model_ptr;
typedef std::unique_ptr<ella_context, ella_context_deleter> ella_context_ptr;
typedef std::unique_ptr<ella_image, ella_image_deleter> ella_image_ptr;
typedef std::unique_ptr<ella_prompt, ella_prompt_deleter> ella_prompt_ptr;
typedef std::unique_ptr<ella_tensor, ella_tensor_deleter> ella_tensor_ptr;
/* Freeing a job cancels it if it has not finished, without waiting. */
typedef std::unique_ptr<ella_job, ella_job_deleter> ella_job_ptr;

#endif /* ELLA_HPP */
