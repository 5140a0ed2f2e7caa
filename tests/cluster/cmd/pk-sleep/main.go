// Command pk-sleep is the only program in the test platform's two container images: the pause
// image of the node's Pod sandboxes and the entrypoint of the test image the registries serve.
// It prints one line (so a test can read it back from the kubelet's container log) and then
// waits until it gets SIGTERM or SIGINT. Built static (CGO_ENABLED=0) and reproducibly.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	fmt.Printf("pk-sleep %v: running until SIGTERM\n", os.Args[1:])
	sig := <-stop
	fmt.Printf("pk-sleep: got %v, exiting\n", sig)
}
