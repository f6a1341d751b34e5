/*
imagestore's test vCenter simulator: a small wrapper around govmomi's vcsim
(github.com/vmware/govmomi/simulator) used by imagestore's tests.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package main

import (
	"encoding/json"
	"flag"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address (host:port, port 0 picks a free one)")
	username := flag.String("username", "", "accepted login user name (default: any non-empty user/password)")
	password := flag.String("password", "", "accepted login password (used with -username)")
	flag.DurationVar(&simulator.SessionIdleTimeout, "session-timeout", 0, "expire sessions idle this long (0 = never)")
	flag.BoolVar(&simulator.Trace, "trace", false, "write SOAP traffic to stderr")
	flag.Parse()

	// Subscribe before printing the ready line, so a signal sent right after it still cleans up.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()

	listenURL := &url.URL{Host: *listen}
	if *username != "" {
		listenURL.User = url.UserPassword(*username, *password)
	}
	model.Service.Listen = listenURL // plain HTTP: Service.TLS stays nil
	server := model.Service.NewServer()
	defer server.Close()

	dc := simulator.Map.Any("Datacenter").(*simulator.Datacenter)
	ds := simulator.Map.Any("Datastore").(*simulator.Datastore)
	sdk := *server.URL
	sdk.User = nil // server.URL carries the login in its userinfo; print it bare
	out := map[string]string{
		"url":           sdk.String(),
		"datacenter":    dc.Name,
		"datastore":     ds.Name,
		"datastore_dir": ds.Info.GetDatastoreInfo().Url,
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		log.Fatal(err)
	}
	_ = os.Stdout.Sync()

	<-sig
}
