{{/*
Names and labels shared by every template. The chart name doubles as the
prefix of cluster-scoped objects, so two releases need two fullnames.
*/}}
{{- define "stellarium-csi.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stellarium-csi.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "stellarium-csi.labels" -}}
app.kubernetes.io/name: {{ include "stellarium-csi.name" . }}
app.kubernetes.io/part-of: stellarium-csi
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "stellarium-csi.nodeSelectorLabels" -}}
app.kubernetes.io/name: {{ include "stellarium-csi.name" . }}
app.kubernetes.io/component: node
{{- end }}

{{- define "stellarium-csi.serviceAccountName" -}}
{{- .Values.serviceAccount.name }}
{{- end }}

{{/* The CSI socket path on the host, as kubelet and the registrar see it. */}}
{{- define "stellarium-csi.socketDir" -}}
{{- printf "%s/plugins/%s" .Values.kubeletDir .Values.driver.name }}
{{- end }}

{{/*
The securityContext of every node-pod container but the driver: root without any
capability, no privilege escalation, a read-only root file system. Root because the
sockets these containers use are root's with mode 0600 (the driver's CSI socket, the fd
holder's socket) or live in root's kubelet directory (the registration socket); no
capability because owning a file needs none.
*/}}
{{- define "stellarium-csi.rootWithoutCapabilities" -}}
runAsUser: 0
runAsGroup: 0
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}
