// Application Insights: Azure ML sends online-endpoint and job telemetry here. The chat endpoint's deployments
// enable it (app_insights_enabled=True in components/deploy_endpoint/deploy_endpoint.py): requests, traces and
// score.py's one JSON line per request (logger azmlinfsrv.chatft.requests).

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Resource id of the Log Analytics workspace that stores the telemetry.')
param logAnalyticsWorkspaceId string

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${baseName}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    // Workspace-based: classic (standalone) Application Insights is retired.
    WorkspaceResourceId: logAnalyticsWorkspaceId
    IngestionMode: 'LogAnalytics'
  }
}

output id string = appInsights.id
output name string = appInsights.name
