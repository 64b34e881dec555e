/* The device agent's OTA half (mh_agent_internal.h): jobs from
 * devices/{id}/ota run on a worker pool shared by every agent in the
 * process — download with libcurl, verify the signature (mh_ota_verify.h),
 * install through the application's callback, report on ota/status. */
#include "mh_agent_internal.h"
#include "mh_agent_parse.h"
#include "mh_ota_verify.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- OTA: jobs run on a small pool of worker threads shared by every
 * agent in the process (motesim runs thousands of agents). ---- */

typedef struct s_work_t {
    mh_agent_t *agent;
    json_t *job;
    struct s_work_t *next;
} s_work_t;

static pthread_mutex_t s_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t s_pool_cond = PTHREAD_COND_INITIALIZER;
static pthread_cond_t s_pool_idle = PTHREAD_COND_INITIALIZER;
static s_work_t *s_head, *s_tail;
static int s_workers_want = 4, s_workers;
static pthread_once_t s_curl_once = PTHREAD_ONCE_INIT;

void mh_agent_ota_workers(int n)
{
    pthread_mutex_lock(&s_pool_lock);
    s_workers_want = n < 1 ? 1 : n > 64 ? 64 : n;
    pthread_mutex_unlock(&s_pool_lock);
}

static void s_curl_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void s_ota_status(mh_agent_t *self, const char *job, const char *state, int progress,
                         const char *version, const char *error)
{
    json_t *v = json_pack("{s:s,s:s,s:i}", "jobId", job, "state", state, "progress", progress);
    if (version && *version)
        json_object_set_new(v, "version", json_string(version));
    if (error && *error)
        json_object_set_new(v, "error", json_string(error));
    ag_send(self, "ota/status", v);
    json_decref(v);
}

/* Ends the current job: remembers its final status (a repeated job gets it
 * again), moves the firmware on when it succeeded, tells the cloud. */
static int s_ota_finish(mh_agent_t *self, const char *job_id, bool ok, const char *error)
{
    char id[72], version[72];
    pthread_mutex_lock(&self->lock);
    if (!*self->ota_job || (job_id && strcmp(job_id, self->ota_job) != 0)) {
        pthread_mutex_unlock(&self->lock);
        return -ENOENT;
    }
    snprintf(id, sizeof id, "%s", self->ota_job);
    snprintf(version, sizeof version, "%s", self->ota_version);
    if (ok) {
        free(self->firmware);
        self->firmware = strdup(version);
    }
    json_t *st = json_pack("{s:s,s:s,s:i}", "jobId", id, "state", ok ? "succeeded" : "failed",
                           "progress", 100);
    json_object_set_new(st, "version", json_string(version));
    if (!ok)
        json_object_set_new(st, "error", json_string(error && *error ? error : "failed"));
    size_t k = self->ota_done_next;
    free(self->ota_done[k].status);
    snprintf(self->ota_done[k].id, sizeof self->ota_done[k].id, "%s", id);
    self->ota_done[k].status = json_dumps(st, JSON_COMPACT);
    self->ota_done_next = (k + 1) % 8;
    self->ota_job[0] = 0;
    pthread_mutex_unlock(&self->lock);
    if (ok) {
        json_t *rep = json_pack("{s:s}", "firmware", version);
        mh_agent_report(self, rep, NULL);
        json_decref(rep);
    }
    ag_send(self, "ota/status", st);
    json_decref(st);
    return 0;
}

int mh_agent_ota_done(mh_agent_t *self, const char *job_id, bool ok, const char *error)
{
    return s_ota_finish(self, job_id, ok, error);
}

typedef struct {
    uint8_t *buf;
    size_t len, cap;
    mh_agent_t *agent; /* progress reports: */
    const char *job, *version;
    int next_pct;    /* the next 25 % step to report */
    int64_t last_ms; /* at most one report a second */
} s_buf_t;

/* Reports download progress in 25 % steps, at most once a second. */
static int s_curl_progress(void *ud, curl_off_t total, curl_off_t now, curl_off_t ut, curl_off_t un)
{
    (void)total;
    (void)ut;
    (void)un;
    s_buf_t *b = ud;
    if (b->cap <= 1 || !b->agent)
        return 0;
    int pct = (int)(100.0 * (double)(b->len) / (double)(b->cap - 1));
    (void)now;
    int64_t t = ag_mono_ms();
    if (pct >= b->next_pct && pct < 100 && t - b->last_ms >= 1000) {
        s_ota_status(b->agent, b->job, "downloading", pct, b->version, NULL);
        b->last_ms = t;
        b->next_pct = (pct / 25 + 1) * 25;
    }
    return 0;
}

static size_t s_curl_write(char *p, size_t sz, size_t n, void *ud)
{
    s_buf_t *b = ud;
    size_t add = sz * n;
    if (b->len + add > b->cap)
        return 0; /* larger than the job says: stop */
    memcpy(b->buf + b->len, p, add);
    b->len += add;
    return add;
}

/* Downloads the image, resuming with a Range request after an
 * interruption. 0, or -1 with why. */
static int s_download(const char *url, int64_t size, s_buf_t *b, char *why, size_t whylen)
{
    if (size <= 0 || size > 256LL * 1024 * 1024) {
        snprintf(why, whylen, "the job's size %lld is not one this device can take",
                 (long long)size);
        return -1;
    }
    b->cap = (size_t)size + 1;
    b->buf = malloc(b->cap);
    b->len = 0;
    if (!b->buf) {
        snprintf(why, whylen, "out of memory for the image");
        return -1;
    }
    pthread_once(&s_curl_once, s_curl_init);
    CURLcode rc = CURLE_OK;
    for (int attempt = 0; attempt < 5; attempt++) {
        CURL *c = curl_easy_init();
        if (!c) {
            snprintf(why, whylen, "out of memory");
            return -1;
        }
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, s_curl_write);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
        curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, s_curl_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, b);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        if (b->len)
            curl_easy_setopt(c, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)b->len);
        rc = curl_easy_perform(c);
        long code = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(c);
        if (rc == CURLE_OK)
            return 0;
        if (rc == CURLE_WRITE_ERROR) {
            snprintf(why, whylen, "the image is larger than the job's size %lld", (long long)size);
            return -1;
        }
        if (rc == CURLE_RANGE_ERROR)
            b->len = 0; /* the server cannot resume: start again */
        if (code == 403 || code == 404) {
            snprintf(why, whylen, "download refused: HTTP %ld", code);
            return -1;
        }
        ag_sleep_ms(200 << attempt);
    }
    snprintf(why, whylen, "download failed: %s", curl_easy_strerror(rc));
    return -1;
}

static void s_ota_run(mh_agent_t *self, json_t *j)
{
    mh_ota_job_t job;
    mh_agent_job_read(j, &job);
    char why[256] = "";
    pthread_mutex_lock(&self->lock);
    mh_agent_install_fn *fn = self->on_install;
    void *ud = self->install_ud, *key = self->ota_key;
    pthread_mutex_unlock(&self->lock);
    s_buf_t b = {.agent = self,
                 .job = job.job_id,
                 .version = job.version,
                 .next_pct = 25,
                 .last_ms = ag_mono_ms()};
    if (!fn) {
        snprintf(why, sizeof why, "this device takes no OTA jobs");
    } else if (!job.version || !job.action ||
               (strcmp(job.action, "install") && strcmp(job.action, "rollback"))) {
        snprintf(why, sizeof why,
                 "the job needs \"version\" and an \"action\" of install or"
                 " rollback");
    } else if (!job.url && strcmp(job.action, "install") == 0) {
        snprintf(why, sizeof why, "an install job needs \"url\"");
    } else {
        if (job.url && (s_download(job.url, job.size, &b, why, sizeof why) < 0 ||
                        mh_ota_verify(key, b.buf, b.len, job.size, job.sha256, job.signature, why,
                                      sizeof why) < 0)) {
            /* why says it */
        } else {
            s_ota_status(self, job.job_id, "installing", 100, job.version, NULL);
            mh_cmd_outcome_t out =
                fn(self, &job, job.url ? b.buf : NULL, job.url ? b.len : 0, why, sizeof why, ud);
            free(b.buf);
            if (out == MH_CMD_PENDING)
                return;
            s_ota_finish(self, job.job_id, out == MH_CMD_SUCCEEDED, why);
            return;
        }
    }
    free(b.buf);
    s_ota_finish(self, job.job_id, false, why);
}

static void *s_worker(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&s_pool_lock);
    for (;;) {
        while (!s_head)
            pthread_cond_wait(&s_pool_cond, &s_pool_lock);
        s_work_t *w = s_head;
        s_head = w->next;
        if (!s_head)
            s_tail = NULL;
        pthread_mutex_unlock(&s_pool_lock);
        s_ota_run(w->agent, w->job);
        pthread_mutex_lock(&s_pool_lock);
        w->agent->ota_active--;
        pthread_cond_broadcast(&s_pool_idle);
        json_decref(w->job);
        free(w);
    }
    return NULL;
}

static void s_ota_enqueue(mh_agent_t *self, json_t *job)
{
    s_work_t *w = calloc(1, sizeof *w);
    if (!w)
        return;
    w->agent = self;
    w->job = json_incref(job);
    pthread_mutex_lock(&s_pool_lock);
    while (s_workers < s_workers_want) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, s_worker, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break;
        s_workers++;
    }
    self->ota_active++;
    if (s_tail)
        s_tail->next = w;
    else
        s_head = w;
    s_tail = w;
    pthread_cond_signal(&s_pool_cond);
    pthread_mutex_unlock(&s_pool_lock);
}

/* Drops this agent's queued work and waits for its running work. */
void ag_ota_forget(mh_agent_t *self)
{
    pthread_mutex_lock(&s_pool_lock);
    s_work_t **pp = &s_head, *last = NULL;
    while (*pp) {
        s_work_t *w = *pp;
        if (w->agent == self) {
            *pp = w->next;
            self->ota_active--;
            json_decref(w->job);
            free(w);
        } else {
            last = w;
            pp = &w->next;
        }
    }
    s_tail = last;
    while (self->ota_active > 0)
        pthread_cond_wait(&s_pool_idle, &s_pool_lock);
    pthread_mutex_unlock(&s_pool_lock);
}

void ag_ota_job(mh_agent_t *self, const char *payload, size_t len)
{
    mh_ota_job_t fields;
    json_t *job = mh_agent_parse_job(payload, len, &fields);
    if (!job)
        return;
    const char *id = fields.job_id;
    char *repeat = NULL;
    bool run = false;
    const char *busy = NULL;
    char busy_id[72];
    pthread_mutex_lock(&self->lock);
    if (strcmp(self->ota_job, id) == 0) {
        self->ota_repeats++; /* already working on it (and said so) */
    } else {
        for (size_t i = 0; i < 8; i++)
            if (strcmp(self->ota_done[i].id, id) == 0 && self->ota_done[i].status)
                repeat = strdup(self->ota_done[i].status);
        if (repeat) {
            self->ota_repeats++;
        } else if (*self->ota_job) {
            snprintf(busy_id, sizeof busy_id, "%s", self->ota_job);
            busy = busy_id;
        } else {
            snprintf(self->ota_job, sizeof self->ota_job, "%s", id);
            const char *v = fields.version;
            snprintf(self->ota_version, sizeof self->ota_version, "%s", v ? v : "");
            self->ota_jobs++;
            run = true;
        }
    }
    pthread_mutex_unlock(&self->lock);
    if (repeat) {
        char topic[160];
        snprintf(topic, sizeof topic, "devices/%s/ota/status", self->device_id);
        MQTTAsync_message m = MQTTAsync_message_initializer;
        m.payload = repeat;
        m.payloadlen = (int)strlen(repeat);
        m.qos = 1;
        MQTTAsync_sendMessage(self->client, topic, &m, NULL);
        free(repeat);
    } else if (busy) {
        char why[128];
        snprintf(why, sizeof why, "busy with job %s", busy);
        s_ota_status(self, id, "failed", 0, NULL, why);
    } else if (run) {
        /* Answer at once: the job is taken (it may wait for a download
         * thread), so the cloud neither re-sends it nor times it as lost. */
        s_ota_status(self, id, "downloading", 0, fields.version, NULL);
        s_ota_enqueue(self, job);
    }
    json_decref(job);
}

int mh_agent_on_ota(mh_agent_t *self, const char *public_key_pem, mh_agent_install_fn *fn, void *ud)
{
    void *key = mh_ota_key_load(public_key_pem);
    if (!key)
        return -EINVAL;
    pthread_mutex_lock(&self->lock);
    mh_ota_key_free(self->ota_key);
    self->ota_key = key;
    self->on_install = fn;
    self->install_ud = ud;
    pthread_mutex_unlock(&self->lock);
    return 0;
}

const char *mh_agent_firmware(mh_agent_t *self, char *buf, size_t len)
{
    pthread_mutex_lock(&self->lock);
    snprintf(buf, len, "%s", self->firmware ? self->firmware : "");
    pthread_mutex_unlock(&self->lock);
    return buf;
}

uint64_t mh_agent_ota_jobs(mh_agent_t *self)
{
    pthread_mutex_lock(&self->lock);
    uint64_t n = self->ota_jobs;
    pthread_mutex_unlock(&self->lock);
    return n;
}

uint64_t mh_agent_ota_repeats(mh_agent_t *self)
{
    pthread_mutex_lock(&self->lock);
    uint64_t n = self->ota_repeats;
    pthread_mutex_unlock(&self->lock);
    return n;
}
