/* The sandbox ("pause") process of the real-runtime test tier's pod image: it holds
 * the pod's namespaces and does nothing else. No registry is reachable here, so the
 * image is built from this file by `cargo xtask setup` (static, so the image needs no
 * libraries) and imported into the test containerd. It exits on SIGTERM or SIGINT,
 * and reaps children the way a PID 1 must. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction q = {.sa_handler = quit};
    struct sigaction r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGTERM, &q, NULL);
    sigaction(SIGINT, &q, NULL);
    sigaction(SIGCHLD, &r, NULL);
    for (;;)
        pause();
}
