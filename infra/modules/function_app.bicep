// The retraining function: an Azure Functions app on the Flex Consumption plan (Linux, Python 3.11) whose one
// function, retrain_on_new_data, takes blob-created events off the retraining queue (retrain_queue.bicep) and runs
// pipelines/retrain.py on the training data (code: infra/retrain_function/). Nothing calls the app: its queue
// trigger pulls. It runs as the user-assigned retrain identity: no keys, no secrets.
// The plan is part of this module: it exists only for this app.

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Azure region; it must offer the Flex Consumption plan (eastus2 does).')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Resource id of the user-assigned identity the function runs as.')
param identityId string

@description('Client id of that identity: DefaultAzureCredential and the host storage connection pick it by this id.')
param identityClientId string

@description('Name of the function\'s own storage account (host state and code package).')
param functionStorageName string

@description('Blob endpoint of that account.')
param functionStorageBlobEndpoint string

@description('Container of that account the code package is deployed to.')
param deploymentContainerName string

@description('Name of the Application Insights resource the function logs to.')
param applicationInsightsName string

@description('Name of the Azure ML workspace the function submits to.')
param workspaceName string

@description('Blob endpoint of the storage account that holds the training data.')
param trainingStorageBlobEndpoint string

@description('Container that holds the training data.')
param trainingDataContainerName string

@description('Queue of the function storage account that Event Grid puts the blob-created events on.')
param retrainQueueName string

@description('Container of the function storage account holding the lock blob that lets one worker decide at a time.')
param lockContainerName string

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: events wait on the queue (a week) through a zone outage and are worked off afterwards; zone redundancy is not worth its always-ready instances here
  name: 'asp-${baseName}-retrain'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: `func azure functionapp publish` from a laptop reaches the app's deployment endpoint and there is no VNet in this template (README: network isolation); the function has no HTTP trigger
  // checkov:skip=CKV_AZURE_17: nothing calls the app (its queue trigger pulls), so there is no client to present a certificate
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero per queued message; there is no standing instance to fail over from
  // checkov:skip=CKV_AZURE_213: no HTTP endpoint to probe: the only function is a queue trigger, whose failures the queue retries
  name: 'func-${baseName}-${uniqueString(resourceGroup().id)}'
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${functionStorageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        // The lowest cap Flex Consumption accepts (MicrosoftDocs/azure-docs#128255), so one instance cannot be
        // enforced here: retrain_handler.BlobLock lets one worker decide at a time instead.
        maximumInstanceCount: 40
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // Host storage through the identity (the account has shared keys disabled).
        {
          name: 'AzureWebJobsStorage__accountName'
          value: functionStorageName
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        // What pipelines/azure_backend.workspace_client() and DefaultAzureCredential read.
        {
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        {
          name: 'AZURE_SUBSCRIPTION_ID'
          value: subscription().subscriptionId
        }
        {
          name: 'AZURE_RESOURCE_GROUP'
          value: resourceGroup().name
        }
        {
          name: 'AZUREML_WORKSPACE_NAME'
          value: workspaceName
        }
        // Where infra/retrain_function/retrain_handler.py downloads the training data from.
        {
          name: 'CHATFT_TRAINING_ACCOUNT_URL'
          value: trainingStorageBlobEndpoint
        }
        {
          name: 'CHATFT_TRAINING_CONTAINER'
          value: trainingDataContainerName
        }
        // The queue the trigger reads (function_app.py: queue_name="%CHATFT_RETRAIN_QUEUE%") and the lock blob's home.
        {
          name: 'CHATFT_RETRAIN_QUEUE'
          value: retrainQueueName
        }
        {
          name: 'CHATFT_LOCK_ACCOUNT_URL'
          value: functionStorageBlobEndpoint
        }
        {
          name: 'CHATFT_LOCK_CONTAINER'
          value: lockContainerName
        }
      ]
    }
  }
}

output id string = functionApp.id
output name string = functionApp.name
