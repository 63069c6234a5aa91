// Package api is the control-plane API of kindlingd, the Kindling host
// agent: the gRPC service Kindling (package kindling.v1) and its messages,
// defined in kindling.proto beside this file.
//
// The Go code here is generated from kindling.proto and committed:
// kindling.pb.go holds the messages and enums, kindling_grpc.pb.go the
// client and the server interface. Never edit it by hand; change
// kindling.proto and run
//
//	make proto
//
// which runs Debian bookworm's protoc (3.21.12; make setup installs
// protobuf-compiler) with the protoc-gen-go and protoc-gen-go-grpc that
// go.mod pins as tools. TestGeneratedCodeIsCurrent fails while the committed
// code differs from what that command writes.
//
// This package holds wire types only, never behaviour: the daemon that
// serves the API is agent/host.
package api
