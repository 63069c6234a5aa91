// Command gohello only writes to stdout: the smallest Go task.
package main

import "fmt"

func main() { fmt.Println("hello from a Kindling task") }
